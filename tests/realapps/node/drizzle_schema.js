// The CRM schema (crm.js DDL) as Drizzle tables and relations, the way a Drizzle app declares it.
import { relations } from "drizzle-orm";
import { char, integer, jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

export const teams = pgTable("teams", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  name: text("name").notNull(),
});

export const users = pgTable("users", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  name: text("name").notNull(),
  email: text("email").notNull(),
  sessionToken: text("session_token").notNull().unique(),
});

export const contacts = pgTable("contacts", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  ownerId: integer("owner_id").references(() => users.id),
  email: text("email").notNull(),
  name: text("name").notNull(),
  metadata: jsonb("metadata").notNull().default({}),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

export const campaigns = pgTable("campaigns", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  name: text("name").notNull(),
  status: text("status").notNull(),
});

export const campaignRecipients = pgTable("campaign_recipients", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  campaignId: integer("campaign_id").notNull().references(() => campaigns.id),
  contactId: integer("contact_id").notNull().references(() => contacts.id),
  email: text("email").notNull(),
});

export const activities = pgTable("activities", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  userId: integer("user_id").references(() => users.id),
  contactId: integer("contact_id").references(() => contacts.id),
  action: text("action").notNull(),
  description: text("description").notNull(),
  metadata: jsonb("metadata").notNull().default({}),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

export const scheduledCalls = pgTable("scheduled_calls", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  activityId: integer("activity_id").notNull().references(() => activities.id),
  contactId: integer("contact_id").notNull().references(() => contacts.id),
  scheduledFor: timestamp("scheduled_for", { withTimezone: true }).notNull(),
});

export const leads = pgTable("leads", {
  id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
  teamId: integer("team_id").notNull().references(() => teams.id),
  ownerId: integer("owner_id").references(() => users.id),
  title: text("title").notNull(),
  status: text("status").notNull(),
});

export const countries = pgTable("countries", {
  code: char("code", { length: 2 }).primaryKey(),
  name: text("name").notNull(),
});

export const contactsRelations = relations(contacts, ({ one, many }) => ({
  owner: one(users, { fields: [contacts.ownerId], references: [users.id] }),
  activities: many(activities),
}));

export const usersRelations = relations(users, ({ many }) => ({
  contacts: many(contacts),
}));

export const activitiesRelations = relations(activities, ({ one }) => ({
  contact: one(contacts, { fields: [activities.contactId], references: [contacts.id] }),
  user: one(users, { fields: [activities.userId], references: [users.id] }),
}));
