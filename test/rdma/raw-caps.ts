// Run inside a container namespace (node --import tsx test/rdma/raw-caps.ts <socket>): one
// process fills its sessions' caps with hand-made requests, rdma_cm ids and event channels
// included, passing the same descriptor again and again, and checks that every creation past
// a cap fails with a clear errno while the router keeps answering. Prints one JSON object.
import { openSync } from 'node:fs';
import { native } from '../../src/native.js';
import { MsgType } from '../../src/protocol/codec.js';
import { RawSession, type Reply } from '../lib/raw-session.js';

const socket = process.argv[2];
const out: Record<string, unknown> = {};
const stats = async (s: RawSession) => JSON.parse((await s.call(MsgType.RDMA_STATS)).payload.toString());
const okCount = (rs: Reply[]) => rs.filter((r) => r.status === 0).length;
const firstError = (rs: Reply[]) => rs.find((r) => r.status !== 0)?.status ?? 0;
const anyFd = openSync('/dev/null', 'r'); // every request carries a new duplicate of it

const a = new RawSession(socket, 20_000);
await a.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
const before = await stats(a);
const { objectsPerSession, fdsPerSession, fdBudget } = before.limits;
out.limits = before.limits;

// 1. Event channels, each keeping a descriptor in the router: at most fdsPerSession.
const chans = await a.many(fdsPerSession + 8, () => a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
out.cmChannelsCreated = okCount(chans);
out.cmChannelOverCap = firstError(chans);
out.compChannelOverCap = (await a.call(MsgType.RDMA_CREATE_CHANNEL, [], [], [anyFd])).status; // the same cap
out.routerFdsHeld = (await stats(a)).fds - before.fds;
// Destroying them closes the router's descriptors (a create/destroy loop must not leak).
const destroyed = await a.many(chans.length, (i) => a.call(MsgType.CM_DESTROY_CHANNEL, [chans[i].h[0]]));
out.cmChannelsDestroyed = okCount(destroyed.filter((_, i) => chans[i].status === 0));
out.routerFdsAfterDestroy = (await stats(a)).fds - before.fds;
const again = await a.many(fdsPerSession, () => a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
out.cmChannelsAgain = okCount(again);
await a.many(again.length, (i) => a.call(MsgType.CM_DESTROY_CHANNEL, [again[i].h[0]]));

// 2. rdma_cm ids on one channel: they count against the session's object cap with the verbs
// objects.
const ch = (await a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd])).h[0];
const t0 = Date.now();
const ids = await a.many(objectsPerSession, () => a.call(MsgType.CM_CREATE_ID, [ch, 0x106]), 64);
out.idMs = Date.now() - t0;
out.cmIdsCreated = okCount(ids);
out.cmIdOverCap = firstError(ids);
out.pdOverCap = (await a.call(MsgType.RDMA_ALLOC_PD)).status;
out.destroyOneId = (await a.call(MsgType.CM_DESTROY_ID, [ids[0].h[0]])).status;
out.pdAfterDestroy = (await a.call(MsgType.RDMA_ALLOC_PD)).status;

// 3. Other sessions are not affected by this one's cap ...
const b = new RawSession(socket);
await b.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
out.otherSessionPd = (await b.call(MsgType.RDMA_ALLOC_PD)).status;
b.close();

// 4. ... but all sessions together keep at most fdBudget descriptors in the router.
const sessions: RawSession[] = [];
let held = 0, budgetError = 0;
while (held < fdBudget + fdsPerSession && !budgetError && sessions.length < Math.ceil(fdBudget / fdsPerSession) + 2) {
  const s = new RawSession(socket, 20_000);
  sessions.push(s);
  await s.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
  const rs = await s.many(fdsPerSession, () => s.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
  held += okCount(rs);
  budgetError = rs.length > okCount(rs) ? firstError(rs) : 0;
}
out.budgetHeld = held;
out.budgetError = budgetError;
out.sessionsUsed = sessions.length;
const st = await stats(a);
out.routerFdsAtBudget = st.fds - before.fds;
out.channelsAtBudget = st.resources.cmChannels + st.resources.cmDestroyedChannelsOpen + st.resources.channelFds;
for (const s of sessions) s.close();
// Their descriptors are closed with them: a new session gets a channel again.
const c = new RawSession(socket);
await c.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
for (let i = 0; i < 50; i++) {
  out.channelAfterBudget = (await c.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd])).status;
  if (out.channelAfterBudget === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
out.stillAnswers = (await c.call(MsgType.RDMA_ALLOC_PD)).status;
c.close();
a.close();
console.log(JSON.stringify(out));
process.exit(0);
