"""quanda interoperability: DualDA as a quanda ``Explainer``.

`quanda <https://github.com/dilyabareeva/quanda>`_ evaluates training-data attribution methods
(class, subclass, mislabel and shortcut detection, top-k cardinality, model randomisation,
linear datamodeling score). :class:`DualDAExplainer` lets all of its metrics and benchmarks run
on DualDA::

    from quanda.metrics.downstream_eval import ClassDetectionMetric, MislabelingDetectionMetric
    from captum_dualxda.quanda import DualDAExplainer

    explainer = DualDAExplainer(model=net, train_dataset=train_set, final_fc_layer="fc", C=1e-3)
    explanations = explainer.explain(test_data=x_test, targets=net(x_test).argmax(1))
    metric = ClassDetectionMetric(model=net, train_dataset=train_set)
    metric.update(explanations, test_targets=net(x_test).argmax(1))
    metric.compute()                                    # {"score": ...}

    mislabel = MislabelingDetectionMetric(model=net, train_dataset=train_set,
                                          mislabeling_indices=flipped_indices,
                                          explainer_cls=DualDAExplainer,
                                          expl_kwargs={"final_fc_layer": "fc", "C": 1e-3})
    mislabel.compute()                                  # self-influence in closed form

quanda's default ``Explainer.self_influence`` explains every training sample against the whole
training set (``n_train`` explanations of ``n_train`` scores); DualDA's self-influence is the
closed form ``a_i^{y_i} ||phi(x_i)||^2``, O(n_train), and this wrapper uses it.

This module is the only one in ``captum_dualxda`` that imports quanda; ``import captum_dualxda``
never does. quanda 0.5.0 cannot be installed consistently as published (it pins
``captum<0.9`` and ``datasets>=4.8.4``, whose pyarrow needs ``numpy>=2`` while captum 0.8 pins
``numpy<2``); a working recipe::

    pip install quanda
    pip install "captum==0.9.0" "numpy>=2" "datasets>=4.8.4" "pyarrow>=21" omegaconf

(pip warns about quanda's captum pin; quanda works with captum 0.9). The exact versions tested
in CI are in ``ci/quanda-requirements.txt``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Union

try:
    from quanda.explainers import Explainer
    from quanda.utils.common import process_targets
except ImportError as error:  # pragma: no cover - exercised in the main test environment
    raise ImportError(
        "captum_dualxda.quanda needs the quanda package, which is not installed (or does not import: "
        f"{error}). Install it with:\n"
        "    pip install quanda\n"
        '    pip install "captum==0.9.0" "numpy>=2" "datasets>=4.8.4" "pyarrow>=21" omegaconf\n'
        "(quanda 0.5.0's own pins conflict; see the 'quanda' section of captum_dualxda's README)."
    ) from error

import torch
from torch import nn

from .dualda import DualDA
from .metrics import mislabel_scores
from .solver.settings import DEFAULT_C

__all__ = ["DualDAExplainer"]


class DualDAExplainer(Explainer):
    """DualDA wrapped as a quanda :class:`~quanda.explainers.Explainer`.

    The SVM is fitted in the constructor (as in :class:`~captum_dualxda.DualDA`); quanda's
    metrics and benchmarks construct explainers as ``explainer_cls(model=..., train_dataset=...,
    checkpoints=..., checkpoints_load_func=..., **expl_kwargs)``, so pass DualDA's settings
    (at least ``final_fc_layer``) in ``expl_kwargs``.

    Parameters
    ----------
    model : nn.Module
        The classifier; its final ``nn.Linear`` is ``final_fc_layer``.
    train_dataset : torch.utils.data.Dataset
        Yields ``(x, label)`` tuples (quanda moves them to the model's device). Index ``j`` of
        every explanation addresses ``train_dataset[j]``.
    final_fc_layer : nn.Linear or str
        The final linear layer or its dotted name (e.g. ``"fc"``).
    C : float
        SVM regularisation; smaller C gives more support vectors (denser explanations).
    task : str
        Only ``"image_classification"`` (any model whose batches are ``(inputs, label)``).
    checkpoints : str or list of str, optional
        If given, the LAST checkpoint is loaded into ``model`` before the fit (quanda's
        convention for single-checkpoint explainers).
    checkpoints_load_func : callable, optional
        ``(model, path) -> None``; quanda's ``load_state_dict`` loader by default.
    batch_size : int
        Batch size of the feature extraction.
    self_influence_kind : {"self_influence", "hinge_loss"}
        What :meth:`self_influence` returns (and so what quanda's ``MislabelingDetectionMetric``
        ranks by): DualDA's self-influence ``a_i^{y_i} ||phi(x_i)||^2`` (the paper's choice,
        the default) or the surrogate's per-sample hinge loss (see
        :func:`captum_dualxda.metrics.mislabel_scores`).
    **dualda_kwargs
        Passed to :class:`~captum_dualxda.DualDA` (``fit_intercept``, ``tol``, ``cache_dir``,
        ``device``, ``seed``, ``backend``, ...).

    Notes
    -----
    quanda 0.5.0's ``MislabelingDetectionMetric`` ranks by ``self_influence + 1e-4 * index``
    (its tie-break). DualDA's self-influence is at most ``C * ||phi(x_i)||^2``, so for small
    ``C`` or many training samples that added term can reorder the ranking;
    :func:`captum_dualxda.metrics.mislabel_auc` on ``self_influence()`` is unaffected.

    Attributes
    ----------
    dualda : DualDA
        The fitted attributor (coefficients, support vectors, ``influence`` with ``k``, ...).
    """

    accepted_tasks: List[str] = ["image_classification"]

    def __init__(
        self,
        model: nn.Module,
        train_dataset: torch.utils.data.Dataset,
        final_fc_layer: Union[nn.Linear, str],
        C: float = DEFAULT_C,
        task: str = "image_classification",
        checkpoints: Optional[Union[str, List[str]]] = None,
        checkpoints_load_func: Optional[Any] = None,
        batch_size: int = 64,
        self_influence_kind: str = "self_influence",
        **dualda_kwargs: Any,
    ) -> None:
        if self_influence_kind not in ("self_influence", "hinge_loss"):
            raise ValueError(
                f"`self_influence_kind` must be 'self_influence' or 'hinge_loss', got {self_influence_kind!r}."
            )
        super().__init__(
            model=model,
            train_dataset=train_dataset,
            task=task,  # type: ignore[arg-type]
            checkpoints=checkpoints,
            checkpoints_load_func=checkpoints_load_func,
        )
        if self.checkpoints:
            self.load_last_checkpoint()
        self.self_influence_kind = self_influence_kind
        self.dualda = DualDA(model, final_fc_layer, self.train_dataset, C=C, batch_size=batch_size, **dualda_kwargs)

    def explain(self, test_data: torch.Tensor, targets: Union[List[int], torch.Tensor]) -> torch.Tensor:
        """Scores of every training sample for the given test samples and classes.

        Parameters
        ----------
        test_data : torch.Tensor
            ``(n_test, ...)`` model inputs.
        targets : list of int or torch.Tensor
            ``(n_test,)`` classes to explain, normally the model's predictions.

        Returns
        -------
        torch.Tensor
            ``(n_test, n_train)`` float32, ``[i, j] = a_j^{t_i} phi(x_j).phi(x_i)``; exactly zero
            for training samples that are not support vectors.
        """
        test_data = test_data.to(self.device)
        targets = process_targets(targets, self.device)
        if not isinstance(targets, torch.Tensor):  # None
            raise ValueError("DualDAExplainer.explain needs `targets` (the classes to explain).")
        return self.dualda.influence((test_data, targets.reshape(-1).long()))

    def self_influence(self, batch_size: int = 32) -> torch.Tensor:  # type: ignore[override]
        """Per-training-sample scores in closed form, O(n_train), no explanation loop.

        Parameters
        ----------
        batch_size : int
            Ignored (quanda's signature); nothing is batched.

        Returns
        -------
        torch.Tensor
            ``(n_train,)`` float32 on the explainer's device: DualDA's self-influence, or the
            surrogate hinge loss with ``self_influence_kind="hinge_loss"``.
        """
        return mislabel_scores(self.dualda, self.self_influence_kind).to(self.device)
