"""Base class and small shared types for the typed configuration.

Every option is a pydantic field with a default and a docstring (``use_attribute_docstrings`` turns the docstring
into the field's description, which ``st-workflow config show --docs`` prints). Unknown keys are rejected.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, docstrings are descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        populate_by_name=True,
    )


PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SecretRef(StrictModel):
    """Where a secret comes from: an environment variable, else a Prefect ``Secret`` block.

    Secrets are never stored in the config itself, so a dumped config or a W&B config never contains one.
    """

    env: str | None = None
    """Environment variable holding the secret."""
    prefect_block: str | None = None
    """Name of a Prefect ``Secret`` block to read when the environment variable is unset."""

    def resolve(self) -> SecretStr | None:
        """Return the secret, or ``None`` when it is configured nowhere."""
        if self.env and os.environ.get(self.env):
            return SecretStr(os.environ[self.env])
        if self.prefect_block:
            from prefect.blocks.system import Secret

            return SecretStr(str(Secret.load(self.prefect_block).get()))
        return None
