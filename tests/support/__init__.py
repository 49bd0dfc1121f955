"""Test infrastructure shared by the tests and the benchmarks: waiting, live servers, the app in-process."""
