"""Channels: one module per way of sending, each behind `Channel.send(message) -> Result`."""

from smarttasks.notifications.channels.base import (
    Channel,
    OutboundMessage,
    Outcome,
    OutcomeReceipt,
    Result,
)
from smarttasks.notifications.channels.factory import (
    EMAIL,
    WEBHOOK,
    ChannelSet,
    UnknownChannel,
    build_channels,
)

__all__ = [
    "EMAIL",
    "WEBHOOK",
    "Channel",
    "ChannelSet",
    "OutboundMessage",
    "Outcome",
    "Result",
    "OutcomeReceipt",
    "UnknownChannel",
    "build_channels",
]
