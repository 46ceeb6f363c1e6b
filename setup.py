from setuptools import setup

setup(cffi_modules=["vhostsplice/_core_build.py:ffibuilder",
                    "vhostsplice/sandbox/_seccomp_build.py:ffibuilder"])
