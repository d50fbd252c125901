"""horovodrun as the tests start it: Horovod's own command line (``run_commandline``), the
same code path as the installed ``horovodrun``, with one difference. Before every launch
horovodrun asks whether its Gloo or MPI extension was built by importing TensorFlow in a
forked process: about 2.5 s each time, before any rank starts, and the parallel tests make
well over a hundred launches. tests/parallel/conftest.py asks the same question (the
extension's ``gloo_built()`` and ``mpi_built()``) once per session and passes the answer in
``DCSP_TESTS_HOROVOD_BUILT``; without it this is plain horovodrun. The tests of the launch
scripts (launch/*.sh) run the installed horovodrun itself.
"""
import os
import sys

from horovod.runner import launch

_built = set(os.environ.get("DCSP_TESTS_HOROVOD_BUILT", "").split(","))
if "gloo" in _built:
    launch.gloo_built = lambda verbose=False: True
if "mpi" in _built:
    launch.mpi_built = lambda verbose=False: True

if __name__ == "__main__":
    sys.exit(launch.run_commandline())
