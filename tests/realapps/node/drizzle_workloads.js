// The Drizzle app's pieces of work (seeds 000/001: activities, campaigns, leaderboard, quick log), the
// same code over either driver: drizzle_postgresjs.js and drizzle_pg.js pass their `db` and the two
// contact-card lookups written against their raw client (postgres.js `sql` or a pg.Pool).
import { and, asc, count, desc, eq, gte, inArray } from "drizzle-orm";
import { tokenOf } from "./crm.js";
import { activities, campaignRecipients, campaigns, contacts, leads, scheduledCalls, users } from "./drizzle_schema.js";

const TEAM = 1; // the signed-in team of every piece of work below
const SENDER = 1; // a user of team 1: the campaign's author, the quick log's caller
const SINCE = new Date(Date.UTC(2025, 10, 1));
const CARD_IDS = Array.from({ length: 30 }, (_, i) => 1 + 3 * i); // 30 contacts of team 1, from a request body

/** The scheduled campaign of the team and its recipients: what the send job starts from. */
async function campaignToSend(db) {
  const [campaign] = await db.select({ id: campaigns.id, teamId: campaigns.teamId, name: campaigns.name })
    .from(campaigns)
    .where(and(eq(campaigns.teamId, TEAM), eq(campaigns.status, "scheduled")))
    .limit(1);
  const recipients = await db.select({ contactId: campaignRecipients.contactId, email: campaignRecipients.email })
    .from(campaignRecipients)
    .where(and(eq(campaignRecipients.teamId, TEAM), eq(campaignRecipients.campaignId, campaign.id)));
  return { campaign, recipients };
}

const sentActivity = (campaign, r) => ({
  teamId: campaign.teamId,
  userId: SENDER,
  contactId: r.contactId,
  action: "email_sent",
  description: `Email sent to ${r.email}: ${campaign.name}`,
  metadata: { campaignId: campaign.id, recipientEmail: r.email, subject: campaign.name },
});

async function quickLogValues(db) {
  const [contact] = await db.select({ id: contacts.id }).from(contacts)
    .where(and(eq(contacts.teamId, TEAM), eq(contacts.ownerId, SENDER))).orderBy(asc(contacts.id)).limit(1);
  return {
    activity: { teamId: TEAM, userId: SENDER, contactId: contact.id, action: "call_logged",
      description: "Call: discussed renewal, call back next week", metadata: { durationSeconds: 420 } },
    call: (activityId) => ({ teamId: TEAM, activityId, contactId: contact.id,
      scheduledFor: new Date(Date.UTC(2026, 0, 12, 15)) }),
  };
}

/** name -> piece of work. ``cards(ids, teamId)`` fetches each card with its own statement, concurrently;
 * ``cardsBatched(ids, teamId)`` fetches them with one = ANY statement. */
export function drizzleWorkloads({ db, cards, cardsBatched }) {
  return {
    // seed 000 F1: one INSERT per recipient inside the send loop
    "campaign-send-loop": async () => {
      const { campaign, recipients } = await campaignToSend(db);
      for (const r of recipients) {
        // ... the email goes out here ...
        await db.insert(activities).values(sentActivity(campaign, r));
      }
    },

    // seed 001: the fix, one multi-row INSERT after the loop
    "campaign-send-batch": async () => {
      const { campaign, recipients } = await campaignToSend(db);
      const batch = [];
      for (const r of recipients) batch.push(sentActivity(campaign, r));
      if (batch.length > 0) await db.insert(activities).values(batch);
    },

    // seed 000 F3: top users by activity count, then their names by the ids it returned
    leaderboard: async () => {
      const top = await db.select({ userId: activities.userId, activityCount: count() })
        .from(activities)
        .where(and(eq(activities.teamId, TEAM), gte(activities.createdAt, SINCE)))
        .groupBy(activities.userId)
        .orderBy(desc(count()))
        .limit(10);
      const userIds = top.map((r) => r.userId).filter(Boolean);
      const people = await db.select({ id: users.id, name: users.name, email: users.email })
        .from(users)
        .where(inArray(users.id, userIds));
      const byId = new Map(people.map((u) => [u.id, u]));
      return top.map((r) => ({ ...r, user: byId.get(r.userId) }));
    },

    // seed 000 F3's fix: one query with a LEFT JOIN
    "leaderboard-join": async () => {
      return db.select({ userId: activities.userId, activityCount: count(), userName: users.name, userEmail: users.email })
        .from(activities)
        .leftJoin(users, eq(activities.userId, users.id))
        .where(and(eq(activities.teamId, TEAM), gte(activities.createdAt, SINCE)))
        .groupBy(activities.userId, users.name, users.email)
        .orderBy(desc(count()))
        .limit(10);
    },

    // seed 000 F4: the activity, then the scheduled call that points at it, each autocommitted
    "quick-log": async () => {
      const v = await quickLogValues(db);
      const [activity] = await db.insert(activities).values(v.activity).returning({ id: activities.id });
      await db.insert(scheduledCalls).values(v.call(activity.id));
    },

    // seed 000 F4's fix: both inserts in db.transaction
    "quick-log-tx": async () => {
      const v = await quickLogValues(db);
      await db.transaction(async (tx) => {
        const [activity] = await tx.insert(activities).values(v.activity).returning({ id: activities.id });
        await tx.insert(scheduledCalls).values(v.call(activity.id));
      });
    },

    // seed 000 F6: db.select() loads every column, the metadata jsonb too, for a list page
    "activity-feed-all-columns": async () => {
      return db.select().from(activities)
        .where(and(eq(activities.teamId, TEAM), eq(activities.userId, SENDER)))
        .orderBy(desc(activities.createdAt), desc(activities.id))
        .limit(50);
    },

    // seed 000 F6's fix: the columns the list shows
    "activity-feed-columns": async () => {
      return db.select({ id: activities.id, action: activities.action, description: activities.description,
        contactId: activities.contactId, createdAt: activities.createdAt })
        .from(activities)
        .where(and(eq(activities.teamId, TEAM), eq(activities.userId, SENDER)))
        .orderBy(desc(activities.createdAt), desc(activities.id))
        .limit(50);
    },

    // the relational query API: contacts of the team with their owner, one statement (a lateral join)
    "contacts-with-owner": async () => {
      return db.query.contacts.findMany({
        columns: { id: true, name: true, email: true, createdAt: true },
        where: eq(contacts.teamId, TEAM),
        with: { owner: true },
        orderBy: [asc(contacts.id)],
        limit: 25,
      });
    },

    // the same page written by hand: one owner lookup per contact
    "contacts-owner-loop": async () => {
      const page = await db.select({ id: contacts.id, name: contacts.name, email: contacts.email, ownerId: contacts.ownerId })
        .from(contacts)
        .where(eq(contacts.teamId, TEAM))
        .orderBy(asc(contacts.id))
        .limit(10);
      const out = [];
      for (const c of page) {
        const [owner] = await db.select().from(users).where(eq(users.id, c.ownerId));
        out.push({ ...c, ownerName: owner?.name });
      }
      return out;
    },

    // PATCH /contacts/:id: the session's user is looked up, then the id from the URL is updated as is
    "contact-update-by-id": async () => {
      const request = { token: tokenOf(SENDER), contactId: 2, body: { name: "Renamed Contact" } }; // contact 2: team 2
      const [me] = await db.select({ id: users.id, teamId: users.teamId }).from(users)
        .where(eq(users.sessionToken, request.token));
      if (!me) throw new Error("unauthorized");
      await db.update(contacts).set({ name: request.body.name }).where(eq(contacts.id, request.contactId));
    },

    // the same handler with the tenant check in the UPDATE
    "contact-update-scoped": async () => {
      const request = { token: tokenOf(SENDER), contactId: 4, body: { name: "Renamed Contact" } }; // contact 4: team 1
      const [me] = await db.select({ id: users.id, teamId: users.teamId }).from(users)
        .where(eq(users.sessionToken, request.token));
      if (!me) throw new Error("unauthorized");
      const updated = await db.update(contacts).set({ name: request.body.name })
        .where(and(eq(contacts.id, request.contactId), eq(contacts.teamId, me.teamId)))
        .returning({ id: contacts.id });
      if (updated.length !== 1) throw new Error("contact not found");
    },

    // the pipeline page that forgot its team filter: every team's leads
    "leads-all-teams": async () => {
      return db.select().from(leads);
    },

    "leads-team": async () => {
      return db.select().from(leads).where(eq(leads.teamId, TEAM));
    },

    // POST /contacts/cards {ids}: the inbox asks for the cards of the contacts on screen; each card is
    // fetched with its own statement, all at once over the pool (max 10), scoped to the team
    "contact-cards-fanout": async () => {
      const found = await cards(CARD_IDS, TEAM);
      if (found.length !== CARD_IDS.length) throw new Error(`found ${found.length} cards`);
    },

    // its fix: one statement with = ANY of the requested ids
    "contact-cards-any": async () => {
      const found = await cardsBatched(CARD_IDS, TEAM);
      if (found.length !== CARD_IDS.length) throw new Error(`found ${found.length} cards`);
    },
  };
}
