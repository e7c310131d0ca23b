"""Payloads shared by the demo upstream services and the gateway."""

from pydantic import BaseModel, Field


class User(BaseModel):
    """A user as ``user-service`` stores it."""

    id: int
    name: str
    email: str


class OrderIn(BaseModel):
    """The body of ``POST /api/orders``."""

    user_id: int = Field(ge=1)
    item: str = Field(min_length=1, max_length=100)
    quantity: int = Field(default=1, ge=1, le=100)


class Order(OrderIn):
    """An order as ``order-service`` stores it."""

    id: int


USERS: tuple[User, ...] = (
    User(id=1, name="Ada Lovelace", email="ada@example.com"),
    User(id=2, name="Grace Hopper", email="grace@example.com"),
    User(id=3, name="Alan Turing", email="alan@example.com"),
)
"""The fixed user directory every ``user-service`` replica serves."""

ORDERS: tuple[Order, ...] = (
    Order(id=1, user_id=1, item="analytical engine", quantity=1),
    Order(id=2, user_id=2, item="compiler manual", quantity=3),
)
"""The orders every ``order-service`` replica starts with."""
