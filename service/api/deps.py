"""Typed dependencies: the parts create_app wired, taken from the application state.

They are ``async`` though they never await: FastAPI runs a plain ``def`` dependency in its
thread pool, a hop per dependency per request that a cheap route (the polled GET) notices.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from service.auth import Authenticator, Principal
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


async def get_principal(request: Request) -> Principal:
    """The caller (401 without a valid key when keys exist); kept on the request for logs."""
    auth: Authenticator = request.app.state.auth
    if auth.db.local:
        who = auth.authenticate(request.headers.get("authorization"))
    else:  # a cache miss queries PostgreSQL: off the event loop
        who = await run_in_threadpool(auth.authenticate, request.headers.get("authorization"))
    request.state.principal = who
    return who


async def reader(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    who.require("read")
    return who


async def writer(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    who.require("write")
    return who


async def admin(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    who.require("admin")
    return who


#: The caller, unchecked (a route-level ``dependencies=[Depends(reader)]`` checks the scope).
Caller = Annotated[Principal, Depends(get_principal)]
#: The caller, checked for the scope a route needs.
Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writer)]
Admin = Annotated[Principal, Depends(admin)]
