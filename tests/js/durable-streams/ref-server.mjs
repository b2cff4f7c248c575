// The protocol's reference server (in memory), for ops/bench/durable.py's baseline:
// PORT is its port; it prints "ready <url>" once listening.
import { DurableStreamTestServer } from "@durable-streams/server"

const server = new DurableStreamTestServer({
  port: Number(process.env.PORT),
  host: "127.0.0.1",
  longPollTimeout: 20000,
})
const url = await server.start()
console.log(`ready ${url}`)
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
