"""Tasks (``task=NAME``): how one kind of data is trained -- loss, metrics, module, summary.

``base`` holds the shared LightningModule and task interface; ``lm`` (text corpora) and ``image_text``
(the digits lab) register themselves in ``lmlab.registry.TASK`` when this package's modules are imported.
"""
