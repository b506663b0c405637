"""AsyncVideoSession: the asyncio twin opens, prompts, propagates (an async iterator whose
early close cancels) and closes like the blocking one."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sam2_service.client import AsyncClient, RequestFailed


def test_async_session_prompts_propagates_and_cancels(video_daemon) -> None:
    frames = np.random.default_rng(1).integers(0, 255, (3, 64, 96, 3), dtype=np.uint8)

    async def run() -> tuple:
        async with AsyncClient(video_daemon.socket_path, timeout=300) as client:
            async with await client.open_video(frames) as session:
                assert (session.frame_count, session.width, session.height) == (3, 96, 64)
                mask = await session.add_prompt(0, 5, box=(10, 10, 60, 50))
                got = []
                stream = session.propagate("forward")
                async for frame, masks in stream:
                    got.append((frame, sorted(masks), masks[5].shape, masks[5].dtype))
                    break
                await stream.aclose()  # cancels the rest
                await session.remove_object(5)
            with pytest.raises(RequestFailed) as err:  # closed with the context manager
                await session.reset()
            return mask, got, err.value

    mask, got, err = asyncio.run(run())
    assert mask.shape == (64, 96) and mask.dtype == np.uint8
    assert got == [(0, [5], (64, 96), np.uint8)]
    assert err.code == "unknown_video_session" and "gone" in err.message
