"""`make bench`: the benchmark table of BENCHMARKS.md, every scenario measured in one run.

`stack` starts the services under test, `scenarios` runs the rows, `report` writes them;
`__main__` ties the three together.
"""
