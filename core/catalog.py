"""The one table of datasets, organs, labels and baseline prompt vectors.

Nothing else in the project repeats these facts: the dashboard, the API, the engine and the
training script all look them up here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import UnknownDataset

Task = Literal["classification", "segmentation"]
TASKS: tuple[str, ...] = ("classification", "segmentation")
TASK_NAMES = {
    "classification": {"zh": "分类", "en": "Classification"},
    "segmentation": {"zh": "分割", "en": "Segmentation"},
}

# --- UUSIC25 baseline prompt vocabulary (one-hot sizes: position 8, task 2, type 3, nature 2) ---
POSITIONS = ("breast", "cardiac", "thyroid", "head", "kidney", "appendix", "liver", "indis")
ORGAN_TO_POSITION = {
    "Breast": "breast",
    "Heart": "cardiac",
    "Thyroid": "thyroid",
    "Head": "head",
    "Kidney": "kidney",
    "Appendix": "appendix",
    "Liver": "liver",
}
TASK_PROMPTS = ("segmentation", "classification")
TYPE_PROMPTS = ("whole", "local", "location")
NATURES = ("tumor", "organ")
ORGAN_TO_NATURE = {
    "Breast": "tumor",
    "Heart": "organ",
    "Thyroid": "tumor",
    "Head": "organ",
    "Kidney": "organ",
    "Appendix": "organ",
    "Liver": "organ",
}


def _one_hot(size: int, index: int) -> list[float]:
    vector = [0.0] * size
    vector[index] = 1.0
    return vector


@dataclass(frozen=True)
class Prompts:
    """The four one-hot prompt vectors the baseline network takes with an image."""

    position: list[float]
    task: list[float]
    type: list[float]
    nature: list[float]

    def as_tuple(self) -> tuple[list[float], list[float], list[float], list[float]]:
        return (self.position, self.task, self.type, self.nature)


def prompts_for(organ: str, task: str) -> Prompts:
    """Baseline prompts: position by organ (``indis`` when unknown), task, type ``whole``, nature."""
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_PROMPTS}")
    position = ORGAN_TO_POSITION.get(organ, "indis")
    nature = ORGAN_TO_NATURE.get(organ, "organ")
    return Prompts(
        position=_one_hot(len(POSITIONS), POSITIONS.index(position)),
        task=_one_hot(len(TASK_PROMPTS), TASK_PROMPTS.index(task)),
        type=_one_hot(len(TYPE_PROMPTS), TYPE_PROMPTS.index("whole")),
        nature=_one_hot(len(NATURES), NATURES.index(nature)),
    )


@dataclass(frozen=True)
class OrganGroup:
    """What the dashboard calls an "organ": a UI choice mapped to the baseline's organ string."""

    key: str
    zh: str
    en: str
    organ: str  # the organ string of the request JSON / baseline ("Breast", "Heart", ...)

    def name(self, lang: str = "zh") -> str:
        return self.zh if lang == "zh" else self.en


ORGAN_GROUPS: dict[str, OrganGroup] = {
    g.key: g
    for g in (
        OrganGroup("appendix", "阑尾", "Appendix", "Appendix"),
        OrganGroup("breast", "乳腺", "Breast", "Breast"),
        OrganGroup("liver", "脂肪肝", "Fatty liver", "Liver"),
        OrganGroup("breast_luminal", "乳腺管腔", "Breast luminal subtype", "Breast"),
        OrganGroup("heart", "心脏", "Heart", "Heart"),
        OrganGroup("fetal_head", "胎儿头部", "Fetal head", "Head"),
        OrganGroup("kidney", "肾脏", "Kidney", "Kidney"),
        OrganGroup("thyroid", "甲状腺", "Thyroid", "Thyroid"),
    )
}

_NORMAL_ABNORMAL = (("正常", "normal"), ("异常", "abnormal"))
_BENIGN_MALIGNANT = (("良性", "benign"), ("恶性", "malignant"))
_NORMAL_FATTY = (("正常", "normal"), ("脂肪肝", "fatty"))
_LUMINAL = (
    ("HER2 阳性", "HER2"), ("Luminal A 型", "Luminal A"), ("Luminal B 型", "Luminal B"), ("三阴性", "Triple negative"),
)
_SEG = {
    "breast": ("乳腺病灶", "breast lesion"),
    "heart": ("左心室 + 心肌 + 左心房", "left ventricle + myocardium + left atrium"),
    "thyroid": ("甲状腺结节", "thyroid nodule"),
    "fetal_head": ("胎儿头部", "fetal head"),
    "kidney": ("肾脏", "kidney"),
}


@dataclass(frozen=True)
class Dataset:
    """One (task, dataset) pair the product knows."""

    task: str
    name: str
    group: str  # key into ORGAN_GROUPS
    head: str  # "cls2" | "cls4" | "seg"
    classes: tuple[tuple[str, str], ...]  # per class index: (zh, en); segmentation: (background, target)
    demo_default: bool = False

    @property
    def organ(self) -> str:
        return ORGAN_GROUPS[self.group].organ

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.name)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_name(self, index: int, lang: str = "en") -> str:
        zh, en = self.classes[index]
        return zh if lang == "zh" else en

    def class_names(self, lang: str = "en") -> list[str]:
        return [self.class_name(i, lang) for i in range(len(self.classes))]

    @property
    def seg_target(self) -> str | None:
        return self.classes[1][1] if self.task == "segmentation" else None

    def prompts(self) -> Prompts:
        return prompts_for(self.organ, self.task)


def _cls(name: str, group: str, classes, head: str = "cls2", demo: bool = False) -> Dataset:
    return Dataset("classification", name, group, head, tuple(classes), demo)


def _seg(name: str, group: str, demo: bool = False) -> Dataset:
    return Dataset("segmentation", name, group, "seg", (("背景", "background"), _SEG[group]), demo)


DATASETS: tuple[Dataset, ...] = (
    # classification
    _cls("Appendix", "appendix", _NORMAL_ABNORMAL),
    _cls("private_Appendix", "appendix", _NORMAL_ABNORMAL, demo=True),
    _cls("BUS-BRA", "breast", _BENIGN_MALIGNANT, demo=True),
    _cls("BUSI", "breast", _BENIGN_MALIGNANT),
    _cls("Fatty-Liver", "liver", _NORMAL_FATTY, demo=True),
    _cls("private_Liver", "liver", _NORMAL_FATTY),
    _cls("Breast_luminal", "breast_luminal", _LUMINAL, head="cls4"),
    _cls("private_Breast_luminal", "breast_luminal", _LUMINAL, head="cls4", demo=True),
    # segmentation
    _seg("BUS-BRA", "breast", demo=True),
    _seg("BUSI", "breast"),
    _seg("BUSIS", "breast"),
    _seg("private_Breast", "breast"),
    _seg("private_Breast_luminal", "breast"),
    _seg("CAMUS", "heart", demo=True),
    _seg("private_Cardiac", "heart"),
    _seg("Fetal_HC", "fetal_head", demo=True),
    _seg("private_Fetal_Head", "fetal_head"),
    _seg("KidneyUS", "kidney", demo=True),
    _seg("private_Kidney", "kidney"),
    _seg("DDTI", "thyroid", demo=True),
    _seg("private_Thyroid", "thyroid"),
)

_BY_KEY = {d.key: d for d in DATASETS}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_BY_NORMALISED = {(d.task, _normalise(d.name)): d for d in DATASETS}


def find_dataset(task: str, name: str) -> Dataset:
    """The catalog entry for ``(task, name)``; names match case-insensitively (``private_Breast_Luminal``)."""
    if task not in TASKS:
        raise UnknownDataset(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    found = _BY_KEY.get((task, name)) or _BY_NORMALISED.get((task, _normalise(name)))
    if found is None:
        other = [t for t in TASKS if t != task and (t, _normalise(name)) in _BY_NORMALISED]
        if other:
            raise UnknownDataset(f"dataset {name!r} has no {task} task (it is a {other[0]} dataset)")
        raise UnknownDataset(f"unknown dataset {name!r} for task {task!r}; known: {', '.join(dataset_names(task))}")
    return found


def dataset_names(task: str) -> list[str]:
    return [d.name for d in DATASETS if d.task == task]


def datasets_for(task: str, group: str | None = None) -> list[Dataset]:
    return [d for d in DATASETS if d.task == task and (group is None or d.group == group)]


def groups_for(task: str) -> list[OrganGroup]:
    """The organ groups offered for a task, in catalog order."""
    keys: list[str] = []
    for d in DATASETS:
        if d.task == task and d.group not in keys:
            keys.append(d.group)
    return [ORGAN_GROUPS[k] for k in keys]


def default_dataset(task: str, group: str) -> Dataset:
    """The demo pick for an organ group (DEVELOPERS.md), else its first dataset."""
    candidates = datasets_for(task, group)
    if not candidates:
        raise UnknownDataset(f"organ group {group!r} has no {task} dataset")
    return next((d for d in candidates if d.demo_default), candidates[0])


# ---------------------------------------------------------------------------------------------- served datasets
ServedKeys = frozenset[tuple[str, str]] | None  # None: a model without a dataset list serves every dataset


def served_keys(datasets: Iterable[Sequence[str]] | None) -> ServedKeys:
    """The catalog keys of a model's ``datasets`` list (names matched as :func:`find_dataset` matches them)."""
    if datasets is None:
        return None
    keys = set()
    for entry in datasets:
        task, name = str(entry[0]), str(entry[1])
        try:
            keys.add(find_dataset(task, name).key)
        except UnknownDataset:
            keys.add((task, name))
    return frozenset(keys)


def serves(served: ServedKeys, task: str, dataset_name: str) -> bool:
    """The one "does this model serve this dataset" check: unknown datasets are never served."""
    try:
        key = find_dataset(task, dataset_name).key
    except UnknownDataset:
        return False
    return served is None or key in served


def served_datasets(served: ServedKeys) -> list[tuple[str, str]]:
    """The catalog's (task, name) keys a model with ``served`` keys answers for, in catalog order."""
    return [d.key for d in DATASETS if served is None or d.key in served]
