/** `npm run dev` as a newcomer runs it: prints URLs, a key and curl lines; the printed POST works and shows in the printed inbox; Ctrl-C stops every child. */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '../..');
let child: ChildProcess | undefined;

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

afterAll(() => {
  // Only if the test failed half-way: the whole process group, as a terminal's Ctrl-C would.
  if (child?.pid && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
});

it('npm run dev serves the API, delivers through the sandbox, and Ctrl-C stops everything', async () => {
  child = spawn(process.execPath, [require.resolve('tsx/cli'), 'dev/start.ts'], {
    cwd: ROOT,
    env: { ...process.env, FORCE_COLOR: '0' },
    detached: true, // its own process group, so SIGINT reaches every child as from a terminal
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const deadline = Date.now() + 90_000;
  while (!/Try:\n\s+curl/.test(output)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`npm run dev did not come up:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const base = /dev host is running on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
  const key = /Function key: (\S+)/.exec(output)?.[1];
  const azurite = /Azurite\s+blob :(\d+)\s+queue :(\d+)\s+table :(\d+)/.exec(output)?.slice(1).map(Number) ?? [];
  expect(base).toBeDefined();
  expect(key).toBeDefined();
  expect(azurite).toHaveLength(3);
  expect(output).toContain(`curl -sS -X POST "${base}/api/messages?code=${key}"`);

  // The printed curl line, as fetch.
  const accepted = await fetch(`${base}/api/messages?code=${key}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ to: 'someone@example.com', subject: 'Hello from m365-mailer', text: 'It works' }),
  });
  expect(accepted.status).toBe(202);
  const { id } = (await accepted.json()) as { id: string };
  let status = '';
  for (let i = 0; i < 100 && status !== 'sent'; i++) {
    await new Promise((r) => setTimeout(r, 200));
    status = ((await (await fetch(`${base}/api/messages/${id}?code=${key}`)).json()) as { status: string }).status;
  }
  expect(status).toBe('sent');
  expect(output).toMatch(/\[smtp\] received from .* "Hello from m365-mailer"/);
  const inbox = /Inbox: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(output)?.[1];
  expect(inbox, output).toBeDefined();
  const listed = (await (await fetch(`${inbox}api/messages`)).json()) as Array<{ subject: string }>;
  expect(listed.map((m) => m.subject)).toContain('Hello from m365-mailer');

  const exited = new Promise<number | null>((resolve) => child?.once('exit', (code) => resolve(code)));
  process.kill(-(child.pid as number), 'SIGINT');
  expect(await exited).toBe(0);
  for (const port of [Number(new URL(base as string).port), Number(new URL(inbox as string).port), ...azurite]) {
    expect(await portOpen(port)).toBe(false);
  }
}, 150_000);
