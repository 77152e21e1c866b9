"""The Siamese classifier: a twin CNN with shared weights, scored by the likeness of two embeddings.

- `config`: its params (`SiameseConfig`), plain Python;
- `network`: the architecture (`SiameseNet`) and its checkpoint;
- `module`: how it is trained (`SiameseModule`: losses, optimizer), a LightningModule;
- `training`: `fit_siamese`, the Trainer run over pair batches, and the learning curve's episodes;
  `fit_generator_variant`, a generator variant's classifier as the sweep and benchmarks train it;
- `fewshot`: the few-shot API (`SiameseClassifier`: a support set first, then queries), which
  evaluation and `oneshot-gda` both score through;
- `verification`: the same-class threshold for verifying pairs, calibrated on held-out pairs.

`config` and `verification` import neither torch nor Lightning: checking params loads them alone. `network`
and `fewshot` import neither Lightning nor MLflow: inference loads them alone.
"""
