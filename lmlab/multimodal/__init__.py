"""The digits image-text lab (SPEC §14, §15): continuous image patches into lmlab's Transformer.

- ``digits``   data: splits, captions, patchify and the lossless input map, sequences and batches;
- ``fbdm``     the Fourier Basis Density Model (densities, CDFs, exact bin masses, sampling);
- ``heads``    image output heads: per-pixel categorical over 17 levels, or FBDM;
- ``model``    ``ImageTextModel``: embeddings, positions from the pos module's assigner, masked losses;
- ``metrics``  bits/byte, bits/pixel, caption accuracy, generation judge, sample grid;
- the training task that uses them is ``lmlab.tasks.image_text`` (``data=digits task=image_text``).
"""
