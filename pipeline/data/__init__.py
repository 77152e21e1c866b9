"""The data layer: one few-shot image set type for any source, and what is drawn from it.

- `fewshot`: `FewShotSet` (images, a class per image, per class a group and a role, per image an
  instance key), the seeded role and exemplar rules, and the checks a protocol needs;
- `images`: decoding and preprocessing one image, the same at preparation and at inference;
- `omniglot`, `folder`: the sources (`SOURCES` in `prepare`), each a loader into a `FewShotSet`;
- `episodes`, `batches`: N-way episodes and training batches, drawn from labels;
- `augment`: the classic transforms; `synthetic`: a generator's drawings of the one-shot classes.
"""
