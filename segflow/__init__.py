"""segflow: user segmentation - extracts, dbt features and segments, quality gates, models, activation."""

import os

# OpenMP (scikit-learn's gradient boosting and k-means) spins while it waits for work by default. On a machine
# shared with other work - Airflow's parallel tasks, a test suite's workers - the spinning threads hold the cores
# the working threads need: scoring 400 users took 137 s on 2 busy cores instead of 10 s. Passive waiting costs
# next to nothing on an idle machine. It must be set before the OpenMP runtime loads (the first scikit-learn
# import), hence here; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
