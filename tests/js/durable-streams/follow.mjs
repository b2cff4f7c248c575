// Follows a Durable Stream with the official TypeScript client and prints one JSON line:
// {"items": [...], "offset": "...", "closed": bool}. DS_URL: the stream; DS_OFFSET: where to
// start (default: the beginning); DS_LIVE: "sse" or "long-poll"; DS_STOP_AFTER: drop after
// the batch that brings this many items (default: read to the end); DS_AUTH: a bearer key.
import { stream } from "@durable-streams/client"

const stopAfter = Number(process.env.DS_STOP_AFTER ?? Infinity)
const headers = process.env.DS_AUTH ? { Authorization: `Bearer ${process.env.DS_AUTH}` } : {}
const res = await stream({
  url: process.env.DS_URL,
  offset: process.env.DS_OFFSET ?? "-1",
  live: process.env.DS_LIVE ?? "sse",
  headers,
})
const items = []
let offset = process.env.DS_OFFSET ?? "-1"
let closed = false
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("timed out")), 20000)
  res.subscribeJson(async (batch) => {
    items.push(...batch.items)
    offset = batch.offset
    closed = batch.streamClosed
    if (closed || items.length >= stopAfter) {
      clearTimeout(timer)
      resolve()
    }
  })
})
res.cancel()
console.log(JSON.stringify({ items, offset, closed }))
process.exit(0)
