"""Typed dependencies: the parts create_app wired, taken from the application state.

They are ``async`` though they never await: FastAPI runs a plain ``def`` dependency in its
thread pool, a hop per dependency per request that a cheap route (the polled GET) notices.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.blobs import BlobStore
from service.executors.base import Executor
from service.settings import Settings
from service.store import Database


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


async def get_executor(request: Request) -> Executor:
    return request.app.state.executor


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
