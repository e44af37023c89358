"""The training loop (``gf.train``): :class:`Trainer` (fit / evaluate / predict, schedulers,
gradient clipping, bit-exact resume), :class:`History`, and callbacks (progress bar,
checkpoints, early stopping, non-finite guard, gradient monitor, CSV/JSON logs).

Example::

    >>> from gradfuse.train import Trainer, EarlyStopping
    >>> trainer = Trainer(model, gf.optim.Adam(model.parameters(), lr=1e-3),
    ...                   gf.nn.CrossEntropyLoss(), callbacks=[EarlyStopping(patience=3)])
    >>> history = trainer.fit(train_batches, val=val_batches, epochs=20)
"""

from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    JSONLogger,
    ModelCheckpoint,
    ProgressBar,
)
from .diagnostics import GradientMonitor, NonFiniteGuard
from .history import History
from .trainer import Trainer

__all__ = [
    "Trainer",
    "History",
    "Callback",
    "ProgressBar",
    "ModelCheckpoint",
    "EarlyStopping",
    "NonFiniteGuard",
    "GradientMonitor",
    "CSVLogger",
    "JSONLogger",
]
