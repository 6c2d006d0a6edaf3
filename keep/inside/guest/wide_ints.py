"""numpy's integer defaults of a 64-bit machine inside the Keep.  NOT imported on the host."""


def install():
    pass


def attach(shell):
    pass
