"""The benchmark (`make bench`, `segflow bench`): generated datasets of 10k to 1M users, every pipeline stage
measured in its own process (wall, CPU, peak RSS, rows/s), a plain-pandas baseline of user_features checked
against dbt's, a one-day incremental run after the full build, the whole pipeline through Airflow, and the
scaling exponents. Results go to bench/results/*.json and BENCHMARKS.md.

- harness: datasets, workspaces, running and measuring stages, the results files;
- stages: what one measured child process does (the same callables the Airflow tasks call);
- baseline: user_features in pandas, and the comparison with the dbt output;
- report: targets, scaling exponents and BENCHMARKS.md.
"""
