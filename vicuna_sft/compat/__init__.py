"""Every use of another library's private or version-dependent API, one module per library.

Each module states the releases it was tested on (`TESTED`, [min, max)), and refuses a release
outside that range where going on would give a silently wrong result; tests/unit/test_compat.py
covers each entry. The rest of the package calls these functions and never reaches into a
library's internals itself (tests/unit/test_layout.py checks the private names).
"""
