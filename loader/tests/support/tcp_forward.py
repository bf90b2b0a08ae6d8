"""A plain TCP forwarder, run inside a test's own network namespace (`ip netns exec`), so that a
process there reaches the host's loopback services at the addresses it expects (Kafka advertises
`localhost:9092`). Arguments: triples of `listen_port upstream_host upstream_port`; it listens on
127.0.0.1 for each. Used by loader/tests/faults.rs (the zombie scenario)."""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def server(listen_port, host, port):
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return asyncio.start_server(handle, "127.0.0.1", listen_port)


async def main(args):
    servers = [
        await server(int(args[i]), args[i + 1], int(args[i + 2]))
        for i in range(0, len(args), 3)
    ]
    print("forwarding", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
