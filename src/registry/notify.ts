// Tells a running router that the namespace registry changed (REGISTRY_CHANGED), so that a
// registration counts from the next request on. A router that is not running reads the
// registry when it starts, so "no router" is not an error for the writers.
import { askRouter, NoRouter } from '../client/ask-router.js';
import { MsgType, Reply } from '../protocol/codec.js';

export type NotifyResult = 'reloaded' | 'no-router' | 'refused';

export async function notifyRouter(socketPath: string, timeoutMs = 3000): Promise<NotifyResult> {
  try {
    const { reply } = await askRouter(socketPath, MsgType.REGISTRY_CHANGED, timeoutMs);
    return reply.type === MsgType.REPLY && reply.status === Reply.ACCEL ? 'reloaded' : 'refused';
  } catch (err) {
    if (err instanceof NoRouter) return 'no-router';
    throw err;
  }
}
