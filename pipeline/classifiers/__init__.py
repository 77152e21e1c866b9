"""The Siamese classifier: a twin CNN with shared weights, scored by the likeness of two embeddings.

- `network`: the architecture (`SiameseNet`) and its checkpoint;
- `module`: how it is trained (`SiameseConfig`, `SiameseModule`: losses, optimizer), a LightningModule;
- `training`: `fit_siamese`, the Trainer run over pair batches, and the learning curve's episodes;
- `fewshot`: the few-shot API (`SiameseClassifier`: a support set first, then queries), which
  evaluation and `oneshot-gda` both score through;
- `verification`: the same-class threshold for verifying pairs, calibrated on held-out pairs.

`network`, `fewshot` and `verification` import neither Lightning nor MLflow: inference loads them alone.
"""
