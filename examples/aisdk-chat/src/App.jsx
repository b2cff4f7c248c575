// A chat on the AI SDK's useChat({ resume: true }) against tokenrelay: the only tokenrelay
// specifics are the `api` URL and the stop button's call of the cancel route.
//
// The chat id lives in the URL (?chat=...) and the messages in localStorage, so a reload
// mid-answer finds its chat, and useChat resumes the running answer from tokenrelay.
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { useEffect, useMemo, useState } from 'react';

const API = `${import.meta.env.VITE_TOKENRELAY_URL ?? ''}/v1/ai-sdk/chat`;
const KEY = import.meta.env.VITE_TOKENRELAY_API_KEY;
const HEADERS = KEY ? { Authorization: `Bearer ${KEY}` } : {};

function chatFromUrl() {
  const url = new URL(window.location.href);
  let id = url.searchParams.get('chat');
  if (!id) {
    id = crypto.randomUUID();
    url.searchParams.set('chat', id);
    window.history.replaceState(null, '', url);
  }
  const model = url.searchParams.get('model') ?? import.meta.env.VITE_MODEL ?? 'local/smollm2';
  return { id, model };
}

const saved = id => JSON.parse(localStorage.getItem(`chat:${id}`) ?? '[]');
const textOf = message =>
  message.parts.filter(part => part.type === 'text').map(part => part.text).join('');

export function App() {
  const { id, model } = useMemo(chatFromUrl, []);
  const transport = useMemo(
    () => new DefaultChatTransport({ api: API, headers: HEADERS, body: { model } }),
    [model],
  );
  const { messages, sendMessage, status, stop, error } = useChat({
    id,
    messages: saved(id),
    transport,
    resume: true,
  });
  const [input, setInput] = useState('');

  useEffect(() => {
    localStorage.setItem(`chat:${id}`, JSON.stringify(messages));
  }, [id, messages]);

  const busy = status === 'submitted' || status === 'streaming';

  async function cancel() {
    await stop(); // stops reading here; the cancel route stops the generation on the server
    await fetch(`${API}/${encodeURIComponent(id)}/cancel`, { method: 'POST', headers: HEADERS });
  }

  return (
    <main style={{ maxWidth: 720, margin: '2rem auto', fontFamily: 'system-ui, sans-serif' }}>
      <h1>tokenrelay · AI SDK chat</h1>
      <p>
        chat <code id="chat-id">{id}</code> · model <code>{model}</code> · status{' '}
        <code id="status">{status}</code>
      </p>
      <ol id="messages">
        {messages.map(message => (
          <li key={message.id} className="message" data-role={message.role} data-id={message.id}>
            <strong>{message.role}: </strong>
            <span className="text">{textOf(message)}</span>
          </li>
        ))}
      </ol>
      {error && <p id="error" role="alert">{error.message}</p>}
      <form
        onSubmit={event => {
          event.preventDefault();
          if (!input.trim()) return;
          sendMessage({ text: input });
          setInput('');
        }}
      >
        <input
          id="prompt"
          value={input}
          onChange={event => setInput(event.target.value)}
          placeholder="Say something"
          disabled={busy}
        />
        <button id="send" type="submit" disabled={busy}>
          Send
        </button>
        <button id="stop" type="button" onClick={cancel} disabled={!busy}>
          Stop
        </button>
      </form>
    </main>
  );
}
