/**
 * A minimal SMTP client for the doctor's connection checks: greeting, EHLO, STARTTLS and the TLS handshake, then
 * QUIT. It never authenticates and never sends a message (the AUTH check uses the sender's own transport).
 * TLS verification is on, against the same CAs the sender trusts (src/sender/tlsTrust.ts).
 */
import net from 'node:net';
import tls from 'node:tls';

/** A reply longer than this (all lines together) ends the probe. */
const MAX_REPLY_CHARS = 65_536;

export interface SmtpReplyLines {
  code: number;
  lines: string[];
}

/** Reads complete SMTP replies from a socket (multi-line replies joined). */
class ReplyReader {
  private buffer = '';
  private lines: string[] = [];
  private waiting: { resolve(r: SmtpReplyLines): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.buffer += chunk.toString('latin1');
    if (this.buffer.length > MAX_REPLY_CHARS) return this.fail(new Error('the server sent an over-long reply'));
    this.drain();
  };
  private readonly onEnd = () => this.fail(new Error('the server closed the connection'));
  private readonly onError = (error: Error) => this.fail(error);

  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
  }

  detach(): void {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('error', this.onError);
  }

  next(): Promise<SmtpReplyLines> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.drain();
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.reject(error);
  }

  private drain(): void {
    for (;;) {
      const end = this.buffer.indexOf('\n');
      if (end < 0 || !this.waiting) return;
      const line = this.buffer.slice(0, end).replace(/\r$/, '');
      this.buffer = this.buffer.slice(end + 1);
      this.lines.push(line);
      // "250-…" continues, "250 …" (or a bare "250") ends the reply.
      if (line.length <= 3 || line[3] !== '-') {
        const reply = { code: Number(line.slice(0, 3)) || 0, lines: this.lines };
        this.lines = [];
        const waiting = this.waiting;
        this.waiting = undefined;
        waiting.resolve(reply);
      }
    }
  }
}

/** Where the probe stopped. */
export type ProbeStage = 'connect' | 'greeting' | 'ehlo' | 'starttls' | 'handshake';

export class SmtpProbeError extends Error {
  constructor(
    readonly stage: ProbeStage,
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** What the STARTTLS probe learned. */
export interface StartTlsProbe {
  greeting: string;
  tlsVersion: string;
  cipher: string;
  validFrom: Date;
  validTo: Date;
  subject: string;
}

export interface ProbeTarget {
  /** The address to connect to (from the DNS check). */
  address: string;
  /** The configured host name: the name the certificate must carry (unless it is an IP address). */
  host: string;
  port: number;
  /** The CA list to verify against (trustedCas), or undefined for Node's defaults. */
  ca: string[] | undefined;
  timeoutMs: number;
}

function withTimeout<T>(promise: Promise<T>, socket: net.Socket, timeoutMs: number, stage: ProbeStage): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      socket.destroy();
      reject(new SmtpProbeError(stage, `no answer within ${timeoutMs} ms`, 'ETIMEDOUT'));
    }, timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Opens a TCP connection and closes it at once; resolves with the local and remote endpoints. */
export async function probeTcp(address: string, port: number, timeoutMs: number): Promise<string> {
  const socket = net.connect({ host: address, port });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once('connect', () => resolve());
        socket.once('error', (error: NodeJS.ErrnoException) =>
          reject(new SmtpProbeError('connect', error.message, error.code)),
        );
      }),
      socket,
      timeoutMs,
      'connect',
    );
    return `${socket.remoteAddress ?? address}:${socket.remotePort ?? port}`;
  } finally {
    socket.destroy();
  }
}

/** Greeting, EHLO, STARTTLS, the verified TLS handshake, EHLO again, QUIT. */
export async function probeStartTls(target: ProbeTarget): Promise<StartTlsProbe> {
  const plain = net.connect({ host: target.address, port: target.port });
  let secure: tls.TLSSocket | undefined;
  const step = <T>(promise: Promise<T>, stage: ProbeStage) =>
    withTimeout(promise, secure ?? plain, target.timeoutMs, stage).catch((error: unknown) => {
      if (error instanceof SmtpProbeError) throw error;
      const e = error as NodeJS.ErrnoException;
      throw new SmtpProbeError(stage, e.message, e.code);
    });
  try {
    const reader = new ReplyReader(plain);
    const greeting = await step(reader.next(), 'greeting');
    if (greeting.code !== 220) throw new SmtpProbeError('greeting', `greeting: ${greeting.lines.join(' ')}`);
    plain.write('EHLO m365-mailer-doctor\r\n');
    const ehlo = await step(reader.next(), 'ehlo');
    if (ehlo.code !== 250) throw new SmtpProbeError('ehlo', `EHLO: ${ehlo.lines.join(' ')}`);
    const offersStartTls = ehlo.lines.some((l) => l.slice(4).trim().toUpperCase() === 'STARTTLS');
    if (!offersStartTls) throw new SmtpProbeError('starttls', 'the server does not offer STARTTLS');
    plain.write('STARTTLS\r\n');
    const ready = await step(reader.next(), 'starttls');
    if (ready.code !== 220) throw new SmtpProbeError('starttls', `STARTTLS: ${ready.lines.join(' ')}`);
    reader.detach();
    const servername = net.isIP(target.host) ? undefined : target.host;
    secure = tls.connect({
      socket: plain,
      ...(servername ? { servername } : {}),
      // The sender's own TLS settings (src/sender/smtpTransport.ts): TLS 1.2+, verified against the same CAs.
      minVersion: 'TLSv1.2',
      rejectUnauthorized: true,
      ...(target.ca ? { ca: target.ca } : {}),
      ...(servername ? {} : { checkServerIdentity: (_name, cert) => tls.checkServerIdentity(target.host, cert) }),
    });
    const tlsSocket = secure;
    await step(
      new Promise<void>((resolve, reject) => {
        tlsSocket.once('secureConnect', () => resolve());
        tlsSocket.once('error', reject);
      }),
      'handshake',
    );
    const certificate = tlsSocket.getPeerCertificate();
    const result: StartTlsProbe = {
      greeting: greeting.lines[0]?.slice(0, 200) ?? '',
      tlsVersion: tlsSocket.getProtocol() ?? 'unknown',
      cipher: tlsSocket.getCipher().name,
      validFrom: new Date(certificate.valid_from),
      validTo: new Date(certificate.valid_to),
      subject: [certificate.subject?.CN ?? ''].flat().join(', ').slice(0, 200),
    };
    const secureReader = new ReplyReader(tlsSocket);
    tlsSocket.write('QUIT\r\n');
    await step(secureReader.next(), 'handshake').catch(() => undefined);
    return result;
  } finally {
    secure?.destroy();
    plain.destroy();
  }
}
