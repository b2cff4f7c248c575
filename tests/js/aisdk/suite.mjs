// One test suite for the AI SDK's DefaultChatTransport against a running tokenrelay, run by
// ai-current.test.mjs (the current major of `ai`) and ai5.test.mjs (ai 5.x).
// TOKENRELAY_URL: the API's base URL. NONCE: marks the second turn, which the pytest driver
// then finds in what the upstream received.
import assert from 'node:assert/strict';
import { test } from 'node:test';

const BASE = process.env.TOKENRELAY_URL;
const NONCE = process.env.NONCE ?? 'no-nonce';
if (!BASE) throw new Error('set TOKENRELAY_URL to the tokenrelay API under test');
export const API = `${BASE}/v1/ai-sdk/chat`;
export const HELLO = 'Hello! héllo wörld 😀 日本語';
const DEADLINE_MS = 20_000;

let counter = 0;
export const chatId = label => `chat-${label}-${process.pid}-${Date.now()}-${counter++}`;
export const user = text => ({ id: `u${counter++}`, role: 'user', parts: [{ type: 'text', text }] });

/** Rejects after ms, so that no test waits forever. */
export function within(promise, ms = DEADLINE_MS, what = 'the stream') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Every chunk of a UI message chunk stream, or the first ones until stop(chunks) is true. */
export async function collect(stream, stop = () => false) {
  const reader = stream.getReader();
  const chunks = [];
  const read = async () => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return chunks;
      chunks.push(value);
      if (stop(chunks)) {
        await reader.cancel();
        return chunks;
      }
    }
  };
  return within(read());
}

export const deltas = chunks => chunks.filter(c => c.type === 'text-delta');
export const textOf = chunks => deltas(chunks).map(c => c.delta).join('');
export const jobOf = chunks => chunks[0].messageId.replace(/^msg_/, '');

export async function job(jobId) {
  const response = await fetch(`${BASE}/v1/jobs/${jobId}`);
  assert.equal(response.status, 200);
  return response.json();
}

/** Sends one message on chatId; the stream of the answer. */
export function send(transport, id, messages, model, abortSignal) {
  return transport.sendMessages({
    chatId: id,
    messages,
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal,
    body: { model },
  });
}

export function transportSuite(ai, label) {
  const transport = new ai.DefaultChatTransport({ api: API });

  test(`${label}: abort mid-answer, reconnect: the whole answer, same messageId, the job's text`, async () => {
    const id = chatId(label);
    const abort = new AbortController();
    const first = await collect(
      await send(transport, id, [user('tell me')], 'openai/slow', abort.signal),
      chunks => deltas(chunks).length >= 3,
    );
    abort.abort();
    assert.equal(first[0].type, 'start');
    assert.match(first[0].messageId, /^msg_job_/);

    const again = await transport.reconnectToStream({ chatId: id });
    assert.ok(again, 'a running generation reconnects');
    const whole = await collect(again);
    assert.deepEqual(whole.slice(0, first.length), first, 'the replay starts with what was seen');
    assert.deepEqual(whole[0], { type: 'start', messageId: first[0].messageId });
    assert.deepEqual(whole.at(-1), { type: 'finish', finishReason: 'stop' });
    assert.deepEqual(
      whole.map(c => c.type).filter(t => !t.startsWith('text-')),
      ['start', 'start-step', 'finish-step', 'finish'],
    );
    const expected = Array.from({ length: 50 }, (_, i) => `s${i} `).join('');
    assert.equal(textOf(whole), expected);
    const record = await job(jobOf(whole));
    assert.equal(record.status, 'succeeded');
    assert.equal(record.text, textOf(whole));

    // After the end: nothing to resume.
    assert.equal(await transport.reconnectToStream({ chatId: id }), null);
  });

  test(`${label}: two reconnects at once get the same stream`, async () => {
    const id = chatId(label);
    const abort = new AbortController();
    await collect(
      await send(transport, id, [user('tell me')], 'openai/slow', abort.signal),
      chunks => deltas(chunks).length >= 2,
    );
    abort.abort();
    const [a, b] = await Promise.all([
      transport.reconnectToStream({ chatId: id }).then(collect),
      transport.reconnectToStream({ chatId: id }).then(collect),
    ]);
    assert.equal(deltas(a).length, 50);
    assert.deepEqual(a, b);
  });

  test(`${label}: a chat that never ran has nothing to resume`, async () => {
    assert.equal(await transport.reconnectToStream({ chatId: chatId(label) }), null);
  });

  test(`${label}: an upstream error arrives as an error part`, async () => {
    const chunks = await collect(await send(transport, chatId(label), [user('x')], 'openai/error_mid'));
    const errors = chunks.filter(c => c.type === 'error');
    assert.equal(errors.length, 1);
    assert.match(errors[0].errorText, /failed after 3 pieces/);
    assert.equal(textOf(chunks), 'Hello! héllo wörld ');
    const record = await job(jobOf(chunks));
    assert.equal(record.status, 'failed');
  });

  test(`${label}: keep-alive comments while the model is silent are passed over`, async () => {
    // `pause`: the pytest driver's scenario, 1.5 s before the first token (keep-alive: 0.5 s).
    const chunks = await collect(await send(transport, chatId(label), [user('x')], 'openai/pause'));
    assert.equal(textOf(chunks), HELLO);
    assert.equal(chunks.at(-1).type, 'finish');
  });

  test(`${label}: a bad request is a JSON error the SDK surfaces`, async () => {
    await assert.rejects(
      send(transport, chatId(label), [user('x')], 'nowhere/model'),
      error => /unknown upstream 'nowhere'/.test(error.message) && /"error"/.test(error.message),
    );
  });

  test(`${label}: a tool call is a tool part with its input; the next turn carries it`, async () => {
    const id = chatId(label);
    const turn1 = [user('what is the weather')];
    const stream = await send(transport, id, turn1, 'openai/tools');
    let message;
    await within(
      (async () => {
        for await (const m of ai.readUIMessageStream({ stream })) message = m;
      })(),
    );
    assert.match(message.id, /^msg_job_/);
    const text = message.parts.filter(p => p.type === 'text').map(p => p.text).join('');
    assert.equal(text, 'Let me check the weather.');
    const tools = message.parts.filter(p => p.type.startsWith('tool-'));
    assert.deepEqual(
      tools.map(p => [p.type, p.toolCallId, p.state, p.input]),
      [
        ['tool-get_weather', 'call_1', 'input-available', { location: 'Berlin', unit: 'celsius' }],
        ['tool-get_time', 'call_2', 'input-available', { timezone: 'Europe/Berlin', format: '24h' }],
      ],
    );

    // The client runs the tools and asks on, the first answer in the history.
    const answered = {
      ...message,
      parts: message.parts.map(p =>
        p.type.startsWith('tool-')
          ? { ...p, state: 'output-available', output: { result: `${p.toolCallId} done` } }
          : p,
      ),
    };
    const turn2 = [...turn1, answered, user(`second turn ${label} ${NONCE}`)];
    const chunks = await collect(await send(transport, id, turn2, 'openai/hello'));
    assert.equal(textOf(chunks), HELLO);
    assert.notEqual(chunks[0].messageId, message.id, 'a new answer, a new message');
  });
}

/** A ChatState kept in plain arrays, as a UI framework's would be. */
export class ArrayState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = 'ready';
    this.error = undefined;
  }
  pushMessage = m => {
    this.messages = [...this.messages, m];
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (i, m) => {
    this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)];
  };
  snapshot = thing => structuredClone(thing);
}

/** Polls until check() is true, for at most ms. */
export async function until(check, ms = DEADLINE_MS, what = 'a condition') {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`waited over ${ms} ms for ${what}`);
    await new Promise(resolve => setTimeout(resolve, 20));
  }
}

export const textsOf = m => m.parts.filter(p => p.type === 'text').map(p => p.text);
export const SLOW_TEXT = Array.from({ length: 50 }, (_, i) => `s${i} `).join('');

/** The tests of a Chat continuing an assistant message (its client-side tool's output filled
 * in), with Chat a concrete AbstractChat of the version under test. */
export function continuationSuite(ai, label, Chat) {
  test(`${label}: a continued message keeps its id; reloaded mid-answer, it resumes whole, no tool run again`, async () => {
    const id = chatId(label);
    const ran = [];
    const onToolCall = ({ toolCall }) => {
      ran.push(toolCall.toolCallId);
    };
    const assistant = {
      id: `asst-${id}`,
      role: 'assistant',
      parts: [
        { type: 'step-start' },
        { type: 'text', text: 'Let me check the weather.' },
        {
          type: 'tool-get_weather',
          toolCallId: 'call_1',
          state: 'output-available',
          input: { location: 'Berlin' },
          output: { celsius: 21 },
        },
      ],
    };
    const transport = new ai.DefaultChatTransport({ api: API, body: { model: 'openai/slow' } });
    const before = new Chat({ id, transport, messages: [user('weather?'), assistant], onToolCall });
    const sent = before.sendMessage(); // continue the last message
    await until(
      () => before.messages.some(m => m.role === 'assistant' && textsOf(m).length === 2 && textsOf(m)[1]),
      20_000,
      'the continuation',
    );
    assert.deepEqual(before.messages.map(m => m.id), [before.messages[0].id, assistant.id], 'the same message, continued');
    // The page goes away: the messages it had saved, partial continuation included.
    const saved = structuredClone(before.messages);
    await before.stop();
    await within(sent);

    const after = new Chat({ id, transport: new ai.DefaultChatTransport({ api: API }), messages: saved, onToolCall });
    await within(after.resumeStream());
    assert.equal(after.messages.length, 2, 'no duplicate message');
    const answer = after.messages[1];
    assert.equal(answer.id, assistant.id);
    assert.deepEqual(textsOf(answer), ['Let me check the weather.', SLOW_TEXT]);
    const tools = answer.parts.filter(p => p.type.startsWith('tool-'));
    assert.deepEqual(
      tools.map(p => [p.toolCallId, p.state, p.input, p.output]),
      [['call_1', 'output-available', { location: 'Berlin' }, { celsius: 21 }]],
    );
    assert.deepEqual(answer.parts.map(p => p.type), ['step-start', 'text', 'tool-get_weather', 'step-start', 'text']);
    assert.deepEqual(ran, [], 'no tool runs again');
  });
}

/** A Chat that sent a question to the `tools_slow` model (a pause after its tool calls' input)
 * and was left mid-tool-call: the messages it had saved (a tool part still `input-streaming`),
 * and the same chat resumed from them. */
export async function reloadedMidToolCall(ai, label, Chat) {
  const id = chatId(label);
  const transport = new ai.DefaultChatTransport({ api: API, body: { model: 'openai/tools_slow' } });
  const before = new Chat({ id, transport });
  const sent = before.sendMessage({ text: 'what is the weather' });
  const calling = () =>
    before.messages.length === 2 && before.messages[1].parts.some(p => p.type === 'tool-get_time');
  await until(calling, 20_000, 'the tool calls');
  const saved = structuredClone(before.messages);
  assert.ok(saved[1].parts.some(p => p.type.startsWith('tool-') && p.state === 'input-streaming'));
  await before.stop();
  await within(sent);
  const after = new Chat({ id, transport: new ai.DefaultChatTransport({ api: API }), messages: saved });
  await within(after.resumeStream());
  assert.equal(after.messages.length, 2, 'no duplicate message');
  assert.equal(after.messages[1].id, saved[1].id);
  return after.messages[1];
}

export const toolStates = m =>
  m.parts.filter(p => p.type.startsWith('tool-')).map(p => [p.toolCallId, p.state]);
