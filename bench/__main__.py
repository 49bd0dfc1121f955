"""Run every benchmark: python -m bench"""

import asyncio

from bench import bench_core

asyncio.run(bench_core.main(30, 30))
