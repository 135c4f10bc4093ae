"""jedi-pipe: multi-dataset semi-supervised video action recognition (JEDI), data-pipeline first.

The Python API mirrors the CLI (each command is a thin layer over one of these):

    import jedi_pipe
    jedi_pipe.synthesize("data/synth")                              # jedi-pipe synth
    jedi_pipe.shard("hmdb51", "data/synth/hmdb51", "shards/hmdb51")  # jedi-pipe shard
    jedi_pipe.shard("hmdb51", root, out, **jedi_pipe.read_recipe("preprocess/hmdb51.yaml", "hmdb51", fps=8))  # --recipe
    jedi_pipe.split("shards/hmdb51", "shards/hmdb51-all", labeled_fraction=1.0)  # jedi-pipe split
    cfg = jedi_pipe.load_config("train/demo.yaml", ["jedi.steps=50"])
    jedi_pipe.pretrain(cfg); jedi_pipe.train(cfg); jedi_pipe.evaluate(cfg)
    jedi_pipe.plot(cfg.out)                                          # jedi-pipe plot
    jedi_pipe.export_model(cfg.out, "hmdb51", "student", "m.pt2")   # jedi-pipe export
    list(jedi_pipe.predict("m.pt2", ["v.avi"]))                      # jedi-pipe predict
    list(jedi_pipe.predict_shards("m.pt2", "shards/hmdb51"))         # jedi-pipe predict on a shard folder
    jedi_pipe.verify_shards("shards/hmdb51")                         # jedi-pipe inspect
    loader = jedi_pipe.make_loaders([{"shards": "shards/hmdb51"}], clip={"frames": 8, "size": 32})
"""
__version__ = "0.1.0"

_API = {
    "synthesize": ("synth", "generate"),
    "shard": ("make_shards", "make_shards"),
    "read_recipe": ("make_shards", "read_recipe"),
    "split": ("resplit", "split_shards"),
    "load_config": ("config", "load_config"),
    "pretrain": ("trainer", "pretrain"),
    "train": ("trainer", "train"),
    "evaluate": ("trainer", "evaluate"),
    "plot": ("plots", "write_plots"),
    "make_loaders": ("loaders", "make_loaders"),
    "make_eval_loader": ("loaders", "make_eval_loader"),
    "open_shards": ("shards", "open_shards"),
    "export_model": ("export", "export_model"),
    "load_model": ("export", "load_model"),
    "predict": ("prediction", "predict_videos"),
    "predict_shards": ("prediction", "predict_shards"),
    "verify_shards": ("inspect_shards", "verify_shards"),
}
# No name here may be a submodule's too: importing jedi_pipe.<name> would set the package attribute to
# the module, hiding the function for good (tests/test_imports.py checks it).


def __getattr__(name):
    # Imported on first use: `import jedi_pipe` stays cheap (no torch/DALI) for the CLI.
    if name in _API:
        import importlib
        module, attr = _API[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'jedi_pipe' has no attribute {name!r}")


__all__ = list(_API)
