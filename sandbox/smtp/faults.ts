/** The SMTP server's fault knobs: what tests set to make it fail the way Exchange Online sometimes does. */

/** Fault knobs. Counters are consumed one per use; flags and delays hold until changed. */
export interface ExchangeSmtpFaults {
  /** Destroys the socket after the first chunk of DATA, for this many messages. */
  dropMidData: number;
  /** Answers this many new connections with a 421 4.3.2 greeting and closes them. */
  reply421: number;
  /** Answers this many commands with 421 4.3.2 and closes (only `reply421Command` ones when set). */
  reply421OnCommand: number;
  /** Verb (e.g. 'MAIL', 'EHLO') that `reply421OnCommand` hits; undefined = the next command of any session. */
  reply421Command: string | undefined;
  /** Delays the greeting and every reply by this many milliseconds. */
  delayMs: number;
  /** STARTTLS is neither advertised nor accepted (a misrouted or downgraded connection). */
  noStartTls: boolean;
  /** Answers this many MAIL FROM commands with 432 4.3.2 sender thread limit exceeded. */
  force432: number;
  /** Answers this many MAIL FROM commands with 430 4.2.0 mailbox logon failure. */
  logonFailure430: number;
  /** Recipients (lower-case addresses) refused at RCPT TO with 550 5.1.10, as Exchange refuses an unknown address. */
  refuseRecipients: string[];
}

/** The knobs of a server that fails only as its limits say. */
export function noFaults(): ExchangeSmtpFaults {
  return {
    dropMidData: 0,
    reply421: 0,
    reply421OnCommand: 0,
    reply421Command: undefined,
    delayMs: 0,
    noStartTls: false,
    force432: 0,
    logonFailure430: 0,
    refuseRecipients: [],
  };
}

/** The knobs that count down: each use takes one. */
export type CountedFault = 'dropMidData' | 'reply421' | 'reply421OnCommand' | 'force432' | 'logonFailure430';

/** Takes one use of `knob` if any is left. */
export function takeFault(faults: ExchangeSmtpFaults, knob: CountedFault): boolean {
  if (faults[knob] <= 0) return false;
  faults[knob]--;
  return true;
}
