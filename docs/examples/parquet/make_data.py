"""Write friedman1.parquet: the classic Friedman #1 regression table, as a user's own data.

    y = 10 sin(π x1 x2) + 20 (x3 − 0.5)² + 10 x4 + 5 x5 + ε,   x ~ U[0, 1]^10,  ε ~ N(0, 0.1²)

(the same function as ``sklearn.datasets.make_friedman1``; written with numpy so the example
needs nothing beyond pyarrow). Five of the ten features are distractors, and the label
noise has std 0.1 *in y's own units*: no model can get a test RMSE below ~0.1, which is what
``dlor-scale curves --units target`` should show as the floor E.

    python make_data.py            # → friedman1.parquet beside this script
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_ROWS, N_FEATURES, NOISE, SEED = 4000, 10, 0.1, 0

rng = np.random.default_rng(SEED)
x = rng.uniform(size=(N_ROWS, N_FEATURES))
y = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2
     + 10 * x[:, 3] + 5 * x[:, 4] + NOISE * rng.normal(size=N_ROWS))
columns = {f"x{i + 1}": x[:, i] for i in range(N_FEATURES)} | {"y": y}
out = Path(__file__).with_name("friedman1.parquet")
pq.write_table(pa.table(columns), out)
print(f"wrote {out}: {N_ROWS} rows, columns {list(columns)}; y mean {y.mean():.3f}, std {y.std():.3f}")
