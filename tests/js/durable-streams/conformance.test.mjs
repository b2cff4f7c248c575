// The Durable Streams conformance suite against the servers in DS_URLS (comma-separated):
// with several, each request goes to the next one in turn, so any process must serve any
// stream. DS_LONG_POLL_MS is the servers' long-poll wait (TOKENRELAY_STREAM_LONG_POLL_S).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const urls = (process.env.DS_URLS ?? "").split(",").filter(Boolean)
if (urls.length === 0) throw new Error("set DS_URLS")
let turn = 0

runConformanceTests({
  get baseUrl() {
    return urls[turn++ % urls.length]
  },
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS ?? 1000),
})
