# %% [markdown]
# # dltrain from Python
# Run it as a script (`python examples/notebook.py`) or cell by cell in a notebook: each `# %%`
# is a cell. Everything the CLI does is here, on the same run directories.

# %%
from sklearn.datasets import load_digits

import dltrain

# %% train: the same checks, composition and run directory as `dltrain model=mlp ...`
run = dltrain.train("model=mlp", "model.hidden=64", {"trainer.max_epochs": 5, "trainer.progress": "lines"})
print(run, run.summary["test"])

# %% predict raw inputs (the run's normalisation is applied)
images = load_digits().images[:5]
for row in run.predict(images):
    print(row["pred"], f"{row['confidence']:.2f}")

# %% the model itself, best weights, eval mode
model = run.model()
print(sum(p.numel() for p in model.parameters()), "parameters")

# %% any run directory, and a bad key: one exception type, one line
again = dltrain.load_run(run.dir)
try:
    dltrain.train("model.hiden=3")
except dltrain.UserError as e:
    print("UserError:", e)

# %% the validated config, nothing trained
cfg = dltrain.compose("model=cnn", "optim=sgd")
print(cfg.model.name, cfg.optim.lr)
