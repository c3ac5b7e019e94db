/**
 * The cap on concurrent SMTP sessions of one mailbox across every instance: MAIL_MAX_CONNECTIONS blobs, and a
 * session may exist only while its instance holds the lease on one of them. Blob leases are exclusive in storage and
 * expire on their own, so a crashed instance gives its slots back within LEASE_SECONDS.
 */
import { createHash } from 'node:crypto';
import type { BlobClient, BlobLeaseClient, ContainerClient } from '@azure/storage-blob';
import { silentLogger, type Logger } from '../logger';
import { storageStatusCode } from '../storage/storageClients';

/** Blob lease length (Azure allows 15–60 s). A dead instance's slot is free again after at most this long. */
export const LEASE_SECONDS = 15;
/** Leases are renewed this often while held: three renewals fit in one lease period. */
export const RENEW_EVERY_MS = (LEASE_SECONDS * 1000) / 3;

/**
 * A held connection slot. If a renewal fails, the `onLost` given to `acquire` runs: the holder must close its
 * connection at once.
 */
export interface ConnectionSlot {
  readonly index: number;
  release(): Promise<void>;
}

/** An error's `code` when it is a short identifier (ETIMEDOUT, ECONNRESET, LeaseIdMismatchWithLeaseOperation). */
function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[A-Za-z0-9_]{1,64}$/.test(code) ? code : undefined;
}

export class ConnectionSlots {
  private readonly prefix: string;
  private readonly logger: Logger;
  private readonly renewEveryMs: number;
  private ready: Promise<void> | undefined;

  constructor(
    private readonly container: ContainerClient,
    mailbox: string,
    private readonly max: number,
    options: {
      logger?: Logger;
      /** How often a held lease is renewed; default {@link RENEW_EVERY_MS}. Tests pass a shorter one. */
      renewEveryMs?: number;
    } = {},
  ) {
    // Blob names keep the mailbox out of storage logs' plain text.
    this.prefix = `connections/${createHash('sha256').update(mailbox.toLowerCase()).digest('hex').slice(0, 32)}`;
    this.logger = options.logger ?? silentLogger;
    this.renewEveryMs = options.renewEveryMs ?? RENEW_EVERY_MS;
  }

  /** The blob whose lease is connection slot `index` (for tests and diagnostics). */
  slotBlob(index: number): BlobClient {
    return this.container.getBlobClient(this.blobName(index));
  }

  /**
   * Takes a free slot, or returns undefined when every slot is leased (by this or another instance).
   * `onLost` runs if the lease cannot be renewed later.
   */
  async acquire(onLost: () => void): Promise<ConnectionSlot | undefined> {
    await this.ensureBlobs();
    const start = Math.floor(Math.random() * this.max);
    for (let k = 0; k < this.max; k++) {
      const index = (start + k) % this.max;
      const lease = this.container.getBlobClient(this.blobName(index)).getBlobLeaseClient();
      try {
        await lease.acquireLease(LEASE_SECONDS);
      } catch (error) {
        if (storageStatusCode(error) === 409) continue;
        throw error;
      }
      return this.held(index, lease, onLost);
    }
    return undefined;
  }

  /** How many slots are leased right now, by anyone (tests). */
  async leasedCount(): Promise<number> {
    await this.ensureBlobs();
    let leased = 0;
    for (let index = 0; index < this.max; index++) {
      const properties = await this.container.getBlobClient(this.blobName(index)).getProperties();
      if (properties.leaseState === 'leased') leased++;
    }
    return leased;
  }

  private held(index: number, lease: BlobLeaseClient, onLost: () => void): ConnectionSlot {
    let released = false;
    const timer = setInterval(() => {
      lease.renewLease().catch((error: unknown) => {
        if (released) return;
        released = true;
        clearInterval(timer);
        this.logger.warn('lost an SMTP connection slot lease; closing its connection', {
          slot: index,
          status: storageStatusCode(error),
          code: errorCode(error),
        });
        onLost();
      });
    }, this.renewEveryMs);
    timer.unref();
    return {
      index,
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        try {
          await lease.releaseLease();
        } catch (error) {
          // It expires on its own within LEASE_SECONDS.
          // The status, or without one (no answer: a timeout, a reset) the error's code, which names no data.
          this.logger.warn('could not release an SMTP connection slot lease; it expires on its own', {
            slot: index,
            status: storageStatusCode(error),
            code: errorCode(error),
          });
        }
      },
    };
  }

  private blobName(index: number): string {
    return `${this.prefix}/${index}`;
  }

  private ensureBlobs(): Promise<void> {
    this.ready ??= (async () => {
      await this.container.createIfNotExists();
      await Promise.all(
        Array.from({ length: this.max }, async (_, index) => {
          try {
            await this.container
              .getBlockBlobClient(this.blobName(index))
              .upload('', 0, { conditions: { ifNoneMatch: '*' } });
          } catch (error) {
            const status = storageStatusCode(error);
            // 409: it exists (and may be leased); 412: it exists.
            if (status !== 409 && status !== 412) throw error;
          }
        }),
      );
    })().catch((error: unknown) => {
      this.ready = undefined;
      throw error;
    });
    return this.ready;
  }
}
