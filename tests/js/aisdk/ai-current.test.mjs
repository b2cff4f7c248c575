// The current major of `ai` against tokenrelay: the transport suite, and a Chat's resume.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ai from 'ai';
import {
  API,
  ArrayState,
  chatId,
  continuationSuite,
  job,
  reloadedMidToolCall,
  textsOf,
  toolStates,
  transportSuite,
  until,
  within,
} from './suite.mjs';

transportSuite(ai, 'ai-current');

class Chat extends ai.AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new ArrayState(messages) });
  }
}

continuationSuite(ai, 'ai-current', Chat);

const assistantText = m => m.parts.filter(p => p.type === 'text').map(p => p.text).join('');

test('ai-current: a Chat reloaded mid-answer resumes it: one answer, the whole text', async () => {
  const id = chatId('resume');
  const transport = new ai.DefaultChatTransport({ api: API, body: { model: 'openai/slow' } });
  const before = new Chat({ id, transport });
  const sent = before.sendMessage({ text: 'tell me a long story' });
  await until(
    () => before.messages.length === 2 && assistantText(before.messages[1]).length > 0,
    20_000,
    'the first words',
  );
  // The page goes away: the messages it had saved, partial answer included, are all it keeps.
  const saved = structuredClone(before.messages);
  await before.stop();
  await within(sent);

  const after = new Chat({ id, transport: new ai.DefaultChatTransport({ api: API }), messages: saved });
  await within(after.resumeStream());
  assert.equal(after.status, 'ready');
  assert.equal(after.messages.length, 2, 'no duplicate message');
  const [question, answer] = after.messages;
  assert.equal(question.role, 'user');
  assert.equal(answer.id, saved[1].id);
  const record = await job(answer.id.replace(/^msg_/, ''));
  assert.equal(record.status, 'succeeded');
  assert.equal(assistantText(answer), record.text);
  assert.equal(answer.parts.filter(p => p.type === 'text').length, 1);
});

test('ai-current: a Chat reloaded mid-tool-call resumes the whole message once', async () => {
  const answer = await reloadedMidToolCall(ai, 'midtool', Chat);
  assert.deepEqual(textsOf(answer), ['Let me check the weather.']);
  assert.deepEqual(toolStates(answer), [
    ['call_1', 'input-available'],
    ['call_2', 'input-available'],
  ]);
});
