"""Experiments: every method over several seeds on one data set, probed, clustered and compared.
`runner` runs the (seed, method) pieces (for `xdc demo` in-process, for benchmarks/avdigits.py as
the project's commands); `summary` turns them into numbers over seeds (mean and spread, XDC's
paired differences with a 95% t-interval, chance); `xdc.reports.experiment` writes the table."""
