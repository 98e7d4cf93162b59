"""The DualDA machinery behind the Captum and Zennit faces (private: its names may change).

Layers, each importing only those above it: :mod:`.data` (training data in dataset order),
:mod:`.probe` (running the model and putting it back), :mod:`.guard` (has the model changed since
the fit?), :mod:`.checkpoints`, :mod:`.features` (``phi``), :mod:`.distributed`, :mod:`.store`
(the training features), :mod:`.cache` (fingerprints, atomic files, the lock), :mod:`.support`
(every score), :mod:`.surrogate`, :mod:`.whitening` (``DualDA(whiten=...)``), :mod:`.state` (what
a fit keeps, its key and file), :mod:`.pipeline` (extract, then fit) and :mod:`.ensemble` (checkpoint ensembles). See
``docs/architecture.md``.
"""
