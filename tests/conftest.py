"""One thread per test process. The README's test command runs two pytest-xdist workers on two cores; a worker's
torch, and every script a test starts, would otherwise take a thread per core each and oversubscribe them (the two
slowest test files together: 5 min 22 s with torch's own thread count, 3 min 7 s with one, on this 2-core CPU)."""

import os

if "PYTEST_XDIST_WORKER" in os.environ:  # set before any test module imports torch; scripts started by tests inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
