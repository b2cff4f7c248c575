// The page talks to tokenrelay through this server's proxy (same origin: no CORS needed).
// TOKENRELAY_URL: the API, `make run`'s by default.
import { defineConfig } from 'vite';

const target = process.env.TOKENRELAY_URL ?? 'http://127.0.0.1:8000';
const proxy = { '/v1': { target, changeOrigin: true } };

export default defineConfig({
  server: { proxy },
  preview: { proxy },
});
