/**
 * The SMTP connections of one process: a nodemailer pool of its own, or, with the mailbox's shared connection cap,
 * one connection per connection slot this process holds (a blob lease; see pacing/connectionSlots.ts).
 */
import type { Config } from '../config';
import { MailError } from '../errors';
import { silentLogger, type Logger } from '../logger';
import type { ConnectionSlot, ConnectionSlots } from '../pacing/connectionSlots';
import type { SmtpAuthSource } from './smtpAuth';
import { createSmtpTransport, type Transporter } from './smtpTransport';

import { IDLE_CLOSE_MS } from '../timeouts';

export { IDLE_CLOSE_MS };
/** A closed connection is gone from the server's count a moment after the socket closes; its slot is freed after this. */
const SLOT_RELEASE_DELAY_MS = 200;

/** Where a message goes out: `send` runs one SMTP transaction on some connection. */
export interface ConnectionPool {
  send(message: object): Promise<unknown>;
  /**
   * True when a connection is at hand or could be had now; false when other instances hold every connection slot.
   * Delivery asks before it takes a send slot, so that a send slot is not spent on a message that cannot connect.
   */
  connectionReady(): Promise<boolean>;
  /** Connections this process holds a slot for (tests); 0 without a shared cap. */
  readonly heldSlots: number;
  /** Drops the pool's connections (and gives their slots back). */
  close(): Promise<void>;
}

/** Without a shared cap: one nodemailer pool of MAIL_MAX_CONNECTIONS for the process. */
export class ProcessPool implements ConnectionPool {
  private transporter: Transporter | undefined;
  readonly heldSlots = 0;

  constructor(
    private readonly config: Config,
    private readonly auth: SmtpAuthSource,
  ) {}

  send(message: object): Promise<unknown> {
    this.transporter ??= createSmtpTransport(this.config, this.auth, {
      maxConnections: this.config.limits.maxConnections,
      idleTimeoutMs: IDLE_CLOSE_MS,
    });
    return this.transporter.sendMail(message);
  }

  connectionReady(): Promise<boolean> {
    return Promise.resolve(true);
  }

  close(): Promise<void> {
    this.transporter?.close();
    this.transporter = undefined;
    return Promise.resolve();
  }
}

/** With a shared connection cap: one SMTP connection per leased slot. */
interface Lane {
  slot: ConnectionSlot;
  /**
   * The instance's first connection, kept until idle for IDLE_CLOSE_MS. Further ones are given back as soon as they
   * are idle, so that one busy instance does not keep every slot from the others.
   */
  primary: boolean;
  transporter: Transporter;
  inFlight: number;
  idleTimer?: NodeJS.Timeout;
}

/** Connections that exist only while this process holds one of the mailbox's connection slots. */
export class SlotPool implements ConnectionPool {
  private readonly lanes: Lane[] = [];
  private acquiring: Promise<Lane | undefined> | undefined;
  private readonly logger: Logger;

  constructor(
    private readonly config: Config,
    private readonly auth: SmtpAuthSource,
    private readonly slots: ConnectionSlots,
    private readonly options: { logger?: Logger; idleCloseMs?: number } = {},
  ) {
    this.logger = options.logger ?? silentLogger;
  }

  get heldSlots(): number {
    return this.lanes.length;
  }

  async send(message: object): Promise<unknown> {
    const lane = await this.takeLane();
    lane.inFlight++;
    clearTimeout(lane.idleTimer);
    try {
      return await lane.transporter.sendMail(message);
    } finally {
      lane.inFlight--;
      if (lane.inFlight === 0) this.idle(lane);
    }
  }

  async connectionReady(): Promise<boolean> {
    if (this.lanes.length > 0) return true;
    this.acquiring ??= this.acquireLane().finally(() => (this.acquiring = undefined));
    const lane = await this.acquiring;
    if (lane?.inFlight === 0) this.idle(lane);
    return lane !== undefined;
  }

  async close(): Promise<void> {
    await Promise.all([...this.lanes].map((lane) => this.closeLane(lane)));
  }

  private idle(lane: Lane): void {
    if (!this.lanes.includes(lane)) return;
    clearTimeout(lane.idleTimer);
    const keepMs = lane.primary ? (this.options.idleCloseMs ?? IDLE_CLOSE_MS) : 0;
    lane.idleTimer = setTimeout(() => void this.closeLane(lane), keepMs);
    lane.idleTimer.unref();
  }

  /**
   * The least busy connection this process holds a slot for; a further slot when all are busy and one is free.
   * Throws CONNECTION_SLOTS_BUSY when every slot of the mailbox is held by other instances.
   */
  private async takeLane(): Promise<Lane> {
    const best = this.lanes.reduce<Lane | undefined>((a, b) => (a && a.inFlight <= b.inFlight ? a : b), undefined);
    if (best && (best.inFlight === 0 || this.lanes.length >= this.config.limits.maxConnections)) return best;
    this.acquiring ??= this.acquireLane().finally(() => (this.acquiring = undefined));
    const lane = (await this.acquiring) ?? best;
    if (lane) return lane;
    throw new MailError(
      'CONNECTION_SLOTS_BUSY',
      `All ${this.config.limits.maxConnections} SMTP connection slots of the mailbox are held by other instances`,
    );
  }

  private async acquireLane(): Promise<Lane | undefined> {
    const lane: Partial<Lane> = {};
    const slot = await this.slots.acquire(() => {
      // The lease could not be renewed: another instance may take the slot, so the connection must go now.
      this.logger.debug('connection slot lost; closing its connection');
      if (lane.slot) void this.closeLane(lane as Lane);
    });
    if (!slot) return undefined;
    Object.assign(lane, {
      slot,
      primary: !this.lanes.some((other) => other.primary),
      transporter: createSmtpTransport(this.config, this.auth, {
        maxConnections: 1,
        idleTimeoutMs: IDLE_CLOSE_MS,
      }),
      inFlight: 0,
    });
    this.lanes.push(lane as Lane);
    return lane as Lane;
  }

  /** Closes the lane's connection, then gives its slot back once the server has seen the socket close. */
  private async closeLane(lane: Lane): Promise<void> {
    const index = this.lanes.indexOf(lane);
    if (index < 0) return;
    this.lanes.splice(index, 1);
    clearTimeout(lane.idleTimer);
    lane.transporter.close();
    await new Promise((resolve) => setTimeout(resolve, SLOT_RELEASE_DELAY_MS));
    await lane.slot.release();
  }
}
