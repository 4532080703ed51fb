"""Routes: the estimate report picture (being written)."""

from fastapi import APIRouter

router = APIRouter()
