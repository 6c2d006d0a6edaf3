"""Test support: a hostile keep manager, plain HTTP, and process lookup."""
