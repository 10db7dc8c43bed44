"""The one place that decides a model's preprocessing: the input size from the model, the recipe at that size.

In order, the first that applies:

1. what the user states (:class:`PreprocessOptions`: the short side and the crop of their model's recipe);
2. what the model records (the ``preprocessing`` metadata this project's exporter writes, or an engine's manifest);
3. the model's fixed input H×W, with the recipe's ratio (``data.preprocess_spec.spec_for_input``: 288 → resize 329);
4. for an input of dynamic size, PaddleClas's 224×224 recipe (``SPEC``).

Whatever the source, the crop must be the model's fixed input size: a mismatch is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..core.errors import UserError
from .preprocess_spec import SPEC, PreprocessSpec, spec_for_input


@dataclass(frozen=True)
class PreprocessOptions:
    """A model's recipe as its user states it: ``resize_short`` (the short side before the centre crop) and
    ``crop`` ((height, width) of the crop, the model's input); None: from the model (module docstring)."""

    resize_short: int | None = None
    crop: tuple[int, int] | None = None

    def __post_init__(self):
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(x) for x in self.crop))
            if len(self.crop) != 2 or min(self.crop) < 1:
                raise UserError(f"PreprocessOptions.crop must be (height, width) ≥ 1, not {self.crop}")
        if self.resize_short is not None and self.resize_short < 1:
            raise UserError(f"PreprocessOptions.resize_short must be ≥ 1, not {self.resize_short}")

    @property
    def given(self) -> bool:
        return self.resize_short is not None or self.crop is not None


FROM_MODEL = PreprocessOptions()  # nothing stated: the recipe comes from the model


@dataclass(frozen=True)
class InputRecipe:
    """The preprocessing a model is fed (``spec``) and where it comes from (``source``, for people)."""

    spec: PreprocessSpec
    source: str

    def describe(self) -> str:
        return f"{self.spec.describe()} ({self.source})"


PADDLECLAS_RECIPE = InputRecipe(SPEC, "PaddleClas's recipe")


def recorded_spec(recorded: str | dict | None, where: str) -> PreprocessSpec | None:
    """The spec a model records (the ``preprocessing`` metadata, JSON, or a manifest's dict); None when it records
    none or something that is not one of ours (another tool's metadata of that name)."""
    if not recorded:
        return None
    try:
        data = json.loads(recorded) if isinstance(recorded, str) else recorded
        return PreprocessSpec.from_dict(data, where)
    except (ValueError, UserError):
        return None


def choose_recipe(input_hw: tuple[int | None, int | None], where: str,
                  options: PreprocessOptions = FROM_MODEL, recorded: str | dict | None = None) -> InputRecipe:
    """The recipe of a model whose input is ``input_hw`` (H, W; None where dynamic: ``ClassifierIO.input_hw``)
    (module docstring); UserError naming ``where`` when it does not fit the model's input."""
    h, w = input_hw
    fixed = (h or w, w or h) if (h or w) else None  # one fixed side and one dynamic: a square of the fixed one
    base = recorded_spec(recorded, where)
    if base is not None:
        source = "as the model records it"
    elif fixed:
        base, source = spec_for_input(*fixed), "the model's input size, short side at the recipe's ratio 0.875"
    else:
        base, source = SPEC, "PaddleClas's recipe: the model's input size is dynamic"
    if options.crop is not None:
        base = spec_for_input(*options.crop, resize_short=options.resize_short)
        source = "as given" if options.resize_short else "the crop as given, short side at the recipe's ratio 0.875"
    elif options.resize_short is not None:
        base, source = _with(base, resize_short=options.resize_short, where=where), "the short side as given"
    if fixed and base.crop_hw != fixed:
        raise UserError(f"{where}: the model takes {fixed[0]}×{fixed[1]} inputs (H×W), but the preprocessing "
                        f"({source}) crops {base.crop_hw[0]}×{base.crop_hw[1]}: state the model's own recipe "
                        "(PreprocessOptions.crop, PreprocessOptions.resize_short)")
    return InputRecipe(base, source)


def _with(spec: PreprocessSpec, where: str, **changes) -> PreprocessSpec:
    try:
        return dataclasses.replace(spec, **changes)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
