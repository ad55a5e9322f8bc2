"""Build of the optional C part: everything else is in pyproject.toml.

``portwatch.collect._classify`` is the plain-socket loop of
:func:`portwatch.collect.netlink.count_messages` in C. It is optional: where no
compiler is found the build goes on without it and portwatch runs its pure
Python loop, with the same results (``portwatch --version`` says which runs).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("portwatch.collect._classify", ["portwatch/collect/_classify.c"],
                             optional=True, extra_compile_args=["-O2"])])
