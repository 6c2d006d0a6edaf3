"""`python -m keepbook.kernel -f CONNECTION_FILE`: the kernel process Jupyter starts."""

from ipykernel.kernelapp import IPKernelApp

from keepbook.kernel.kernel import KeepbookKernel

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=KeepbookKernel)
