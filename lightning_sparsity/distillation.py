"""Knowledge distillation from a frozen teacher: the classic losses as pure functions, and
:class:`KnowledgeDistillation`, which runs the teacher beside a student and combines those losses.

The loss is the toolkit's ``KnowledgeDistillationLoss``: ``w_label * CE(student, labels) +
w_teacher * T^2 * D(student / T, teacher / T)``, where ``D`` is a soft cross-entropy (``"CE"``), the
Kullback-Leibler divergence (``"KL"``) or a mean squared error (``"MSE"``) and ``T^2`` keeps the gradients'
size when the temperature changes; optionally plus ``sum_i w_i * MSE(student feature_i, teacher feature_i)``
over pairs of (student module, teacher module) outputs, the toolkit's ``IntermediateLayersKnowledgeDistillationLoss``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

#: Losses of the student's logits against the labels, and against the teacher's logits.
LABEL_LOSS_TYPES: tuple[str, ...] = ("CE",)
TEACHER_LOSS_TYPES: tuple[str, ...] = ("CE", "KL", "MSE")
#: Losses between a student module's output and a teacher module's output.
LAYER_LOSS_TYPES: tuple[str, ...] = ("MSE",)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy of the student's distribution against the teacher's, averaged over the batch."""
    return -(teacher_logits.softmax(-1) * student_logits.log_softmax(-1)).sum(-1).mean()


def kl_divergence(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student), summed over the classes and averaged over the batch.

    The toolkit's ``KL`` averaged over the classes too (``kl_div``'s default reduction), which divides the
    divergence by the number of classes; this is the divergence itself.
    """
    return nn.functional.kl_div(
        student_logits.log_softmax(-1), teacher_logits.log_softmax(-1), reduction="batchmean", log_target=True
    )


def teacher_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, loss_type: str) -> Tensor:
    """``T^2 * D(student / T, teacher / T)`` for ``loss_type`` in :data:`TEACHER_LOSS_TYPES`, in float32."""
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    if loss_type == "CE":
        loss = soft_cross_entropy(student, teacher)
    elif loss_type == "KL":
        loss = kl_divergence(student, teacher)
    elif loss_type == "MSE":
        loss = nn.functional.mse_loss(student, teacher)
    else:
        raise ValueError(f"loss_type must be one of {', '.join(map(repr, TEACHER_LOSS_TYPES))}, got {loss_type!r}")
    return loss * temperature**2


def knowledge_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    labels: Optional[Tensor],
    temperature: float = 1.0,
    loss_types: Sequence[str] = ("CE", "CE"),
    loss_weights: Sequence[float] = (0.5, 0.5),
) -> Tensor:
    """``loss_weights[0] * CE(student, labels) + loss_weights[1] * teacher_loss(...)``; a zero weight skips its
    term (the labels are then not needed)."""
    label_weight, teacher_weight = loss_weights
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if label_weight > 0:
        if labels is None:
            raise ValueError("knowledge_distillation_loss needs labels when loss_weights[0] > 0")
        loss = loss + label_weight * nn.functional.cross_entropy(student_logits.float(), labels)
    if teacher_weight > 0:
        if teacher_logits is None:
            raise ValueError("knowledge_distillation_loss needs teacher_logits when loss_weights[1] > 0")
        loss = loss + teacher_weight * teacher_loss(student_logits, teacher_logits, temperature, loss_types[1])
    return loss


def layer_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Mean squared error between a student module's output and its teacher module's, in float32."""
    return nn.functional.mse_loss(student_features.float(), teacher_features.float())


def check_settings(
    owner: str,
    temperature: float,
    loss_types: Sequence[str],
    loss_weights: Sequence[float],
    layer_mappings: Optional[Sequence[Sequence[str]]] = None,
    layer_loss_weights: Optional[Sequence[float]] = None,
    field_prefix: str = "",
) -> None:
    """Raises a ``ValueError`` naming ``owner``'s field (``field_prefix`` + the setting's name) when a
    distillation setting is out of range."""
    owner = f"{owner}.{field_prefix}"
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{owner}temperature must be a number > 0, got {temperature!r}")
    if len(loss_types) != 2 or loss_types[0] not in LABEL_LOSS_TYPES or loss_types[1] not in TEACHER_LOSS_TYPES:
        raise ValueError(
            f"{owner}loss_types must be [label loss, teacher loss] with the label loss in "
            f"{list(LABEL_LOSS_TYPES)} and the teacher loss in {list(TEACHER_LOSS_TYPES)}, got {list(loss_types)!r}"
        )
    if len(loss_weights) != 2 or not all(_non_negative(w) for w in loss_weights):
        raise ValueError(f"{owner}loss_weights must be two numbers >= 0, got {list(loss_weights)!r}")
    mappings = list(layer_mappings or [])
    for index, pair in enumerate(mappings):
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(name, str) for name in pair):
            raise ValueError(
                f"{owner}layer_mappings[{index}] must be [student module name, teacher module name], got {pair!r}"
            )
    if layer_loss_weights is not None and (
        len(layer_loss_weights) != len(mappings) or not all(_non_negative(w) for w in layer_loss_weights)
    ):
        raise ValueError(
            f"{owner}layer_loss_weights must be one number >= 0 per layer mapping ({len(mappings)}), "
            f"got {list(layer_loss_weights)!r}"
        )
    if not any(w > 0 for w in [*loss_weights, *(layer_loss_weights or [1.0] * len(mappings))]):
        raise ValueError(f"{owner}loss_weights: every loss weight is zero, so nothing would be trained")


def _non_negative(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0


def load_teacher(path: Union[str, Path]) -> nn.Module:
    """The teacher at ``path``: a transformers sequence-classification folder (``save_pretrained``), or the
    model of a :class:`~lightning_sparsity.text.TextClassificationModule` checkpoint (a ``.ckpt`` file)."""
    from lightning_sparsity.text.module import TextClassificationModule

    path = Path(_resolve(str(path)))
    if path.is_dir():
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path)
    if path.is_file():
        # The teacher's own teacher, if it had one, is not needed to rebuild it.
        return TextClassificationModule.load_from_checkpoint(path, map_location="cpu", teacher=None).model
    raise ValueError(f"teacher={str(path)!r} is neither a model folder nor a checkpoint file")


def _resolve(path: str) -> str:
    from lightning_sparsity.text.module import resolve_model_path

    return resolve_model_path(path)


def model_logits(outputs: Any) -> Tensor:
    """The logits of a model's outputs: a tensor, the first item of a tuple, or ``.logits``."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs.logits


def module_output(output: Any) -> Tensor:
    """A module's output tensor (the first item of a tuple or of a transformers output)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    return output[0]


class KnowledgeDistillation:
    """A frozen teacher and the loss that distils it into a student, for use inside any ``LightningModule``.

    Deliberately not an ``nn.Module``: the teacher stays out of the student's ``state_dict`` (checkpoints),
    ``parameters()`` (so the optimizer keeps no state for it), DDP's wrapping and gradient all-reduce, and
    ``.train()``. It runs in eval mode under ``torch.no_grad()``, on the attached student's device and in its
    parameters' dtype (autocast, as in ``bf16-mixed``, applies to it as to the student).
    A teacher given as a path is loaded on first use: a pickled module (``ddp_spawn``) carries the path only.

    In a ``LightningModule``::

        self.distillation = KnowledgeDistillation("dense_model/", temperature=2.0).attach(self.model)
        ...
        def training_step(self, batch, batch_idx):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = self.model(**inputs).logits
            return self.distillation.loss(logits, batch["labels"], inputs)

    Args:
        teacher: the teacher model, or a path for :func:`load_teacher`.
        temperature: softens both distributions before they are compared; > 0.
        loss_types: ``[label loss, teacher loss]``: ``"CE"``, and one of :data:`TEACHER_LOSS_TYPES`.
        loss_weights: weights of the label loss and of the teacher loss, >= 0 (the toolkit's
            ``loss_weight_ratio``).
        layer_mappings: ``[student module name, teacher module name]`` pairs whose outputs are compared
            by mean squared error (names as ``named_modules`` gives them), or None.
        layer_loss_weights: one weight per layer mapping (default 1 each).
    """

    def __init__(
        self,
        teacher: Union[nn.Module, str],
        temperature: float = 1.0,
        loss_types: Sequence[str] = ("CE", "CE"),
        loss_weights: Sequence[float] = (0.5, 0.5),
        layer_mappings: Optional[Sequence[Sequence[str]]] = None,
        layer_loss_weights: Optional[Sequence[float]] = None,
    ) -> None:
        if not isinstance(teacher, (nn.Module, str, Path)):
            raise ValueError(
                f"KnowledgeDistillation.teacher must be a torch module or a path, got {type(teacher).__name__}"
            )
        if not isinstance(teacher, nn.Module) and not Path(_resolve(str(teacher))).exists():
            raise ValueError(f"KnowledgeDistillation.teacher={str(teacher)!r}: no model folder or checkpoint there")
        check_settings(
            "KnowledgeDistillation", temperature, loss_types, loss_weights, layer_mappings, layer_loss_weights
        )
        self.temperature = float(temperature)
        self.loss_types = tuple(loss_types)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.layer_mappings = [tuple(pair) for pair in layer_mappings or []]
        self.layer_loss_weights = [float(w) for w in layer_loss_weights or [1.0] * len(self.layer_mappings)]
        self.teacher_path = None if isinstance(teacher, nn.Module) else str(teacher)
        self._teacher: Optional[nn.Module] = None
        self._student: Optional[nn.Module] = None
        self._features: dict[str, dict[str, Tensor]] = {"student": {}, "teacher": {}}
        self._student_hooks: list[RemovableHandle] = []
        self._teacher_hooks: list[RemovableHandle] = []
        if isinstance(teacher, nn.Module):
            self._set_teacher(teacher)

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (loaded from ``teacher_path`` on first use)."""
        if self._teacher is None:
            teacher = load_teacher(cast(str, self.teacher_path))  # a path whenever no module was given
            self._set_teacher(teacher)
            return teacher
        return self._teacher

    def _set_teacher(self, teacher: nn.Module) -> None:
        teacher.requires_grad_(False).eval()
        self._teacher = teacher
        self._teacher_hooks = _capture(self, "teacher", teacher, [t for _, t in self.layer_mappings])

    def attach(self, student: nn.Module) -> KnowledgeDistillation:
        """Binds the student: the teacher follows its device and dtype, and its mapped layers are captured.
        Returns ``self``."""
        if self._student is not None:
            raise ValueError("KnowledgeDistillation is already attached to a student; make one per student")
        self._student = student
        self._student_hooks = _capture(self, "student", student, [s for s, _ in self.layer_mappings])
        if self._teacher is not None and not self._teacher_hooks:  # detached before
            self._set_teacher(self._teacher)
        return self

    def detach(self) -> None:
        """Removes the layer hooks from student and teacher (``attach`` puts them back), and unbinds the student."""
        for hook in self._student_hooks + self._teacher_hooks:
            hook.remove()
        self._student_hooks, self._teacher_hooks = [], []
        self._student = None

    @torch.no_grad()
    def teacher_logits(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The teacher's logits for the student's model inputs (no labels), on the student's device and dtype."""
        if self._student is None:
            raise ValueError("KnowledgeDistillation needs attach(student) before the first loss")
        teacher = self.teacher
        reference = next(self._student.parameters())
        teacher.to(device=reference.device, dtype=reference.dtype).eval()
        return model_logits(teacher(**inputs))

    @torch.no_grad()
    def cache_teacher_logits(self, batches: Iterable[Mapping[str, Tensor]]) -> Tensor:
        """The teacher's logits for every batch of a fixed dataset, in order, on the CPU: pass rows of it as
        ``teacher_logits`` to :meth:`loss` (by example index) to skip the teacher's forward pass in training.
        Only for data that are the same every epoch (no random cropping or masking): the teacher is in eval
        mode, so the cached logits are the ones it would compute again. Layer losses need the live teacher."""
        return torch.cat([self.teacher_logits(batch).float().cpu() for batch in batches])

    def loss(
        self,
        student_logits: Tensor,
        labels: Optional[Tensor],
        inputs: Optional[Mapping[str, Tensor]] = None,
        teacher_logits: Optional[Tensor] = None,
    ) -> Tensor:
        """The distillation loss of a training batch: the teacher runs on ``inputs`` unless its
        ``teacher_logits`` are given (from :meth:`cache_teacher_logits`)."""
        if teacher_logits is None:
            if inputs is None:
                raise ValueError("KnowledgeDistillation.loss needs the model inputs or cached teacher_logits")
            if self.loss_weights[1] > 0 or self.layer_mappings:
                teacher_logits = self.teacher_logits(inputs)
        elif self.layer_mappings:
            raise ValueError("KnowledgeDistillation.loss with layer_mappings needs the live teacher, not cached logits")
        teacher_logits = None if teacher_logits is None else teacher_logits.to(student_logits.device)
        loss = knowledge_distillation_loss(
            student_logits, teacher_logits, labels, self.temperature, self.loss_types, self.loss_weights
        )
        student_features, teacher_features = self._features["student"], self._features["teacher"]
        for (student_name, teacher_name), weight in zip(self.layer_mappings, self.layer_loss_weights, strict=True):
            loss = loss + weight * layer_loss(student_features[student_name], teacher_features[teacher_name])
        student_features.clear()
        teacher_features.clear()
        return loss

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (``ddp_spawn``) without captured features, and without the teacher when it is a path."""
        state = {**self.__dict__, "_features": {"student": {}, "teacher": {}}}
        if self.teacher_path is not None:
            state.update(_teacher=None, _teacher_hooks=[])
        return state


class _Keep:
    """A forward hook that keeps a module's output in its owner's features (a class, so that it pickles)."""

    def __init__(self, owner: KnowledgeDistillation, role: str, name: str) -> None:
        self.owner, self.role, self.name = owner, role, name

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        tensor = module_output(output)
        self.owner._features[self.role][self.name] = tensor.detach() if self.role == "teacher" else tensor


def _capture(owner: KnowledgeDistillation, role: str, model: nn.Module, names: Sequence[str]) -> list[RemovableHandle]:
    """Hooks that keep the outputs of ``model``'s modules ``names`` as ``owner``'s ``role`` features."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(
            f"KnowledgeDistillation.layer_mappings names {role} modules that the model lacks: "
            f"{', '.join(map(repr, missing))}"
        )
    return [modules[name].register_forward_hook(_Keep(owner, role, name)) for name in dict.fromkeys(names)]
