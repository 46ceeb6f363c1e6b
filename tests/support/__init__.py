"""Helpers shared by the integration and interop tests: private network namespaces, testpmd."""
