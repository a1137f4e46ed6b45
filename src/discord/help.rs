//! `help`: the commands the asking member may use, from the commands' own descriptions, so the
//! list cannot drift from what is registered.

use super::commands::{is_admin, usage};
use super::{no_pings, Context, Error};

/// List the commands you may use here.
#[poise::command(prefix_command, slash_command)]
pub async fn help(ctx: Context<'_>) -> Result<(), Error> {
    // Asking whether the member is an admin may fetch the guild: past Discord's 3 s, maybe.
    ctx.defer_ephemeral().await?;
    let admin = ctx.guild_id().is_some() && is_admin(ctx).await.unwrap_or(false);
    let prefix = ctx.data().core.config().prefix.clone();
    let commands: Vec<Listed> = ctx
        .framework()
        .options()
        .commands
        .iter()
        .filter(|c| !c.hide_in_help && c.name != "help")
        .map(|c| Listed {
            usage: usage(&prefix, &c.name),
            description: c.description.as_deref().unwrap_or_default().to_string(),
            admins_only: !c.default_member_permissions.is_empty(),
        })
        .collect();
    let text = render(&commands, admin, &prefix, &ctx.cache().current_user().name);
    let reply = poise::CreateReply::default().content(text).ephemeral(true).allowed_mentions(no_pings());
    ctx.send(reply).await?;
    Ok(())
}

/// One command as the help lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    usage: String,
    description: String,
    admins_only: bool,
}

fn render(commands: &[Listed], admin: bool, prefix: &str, bot: &str) -> String {
    let line = |c: &Listed| format!("- {}: {}", c.usage, c.description);
    let mut text = format!(
        "Mention me (@{bot}) to talk to me. Commands, with `{prefix}` or as slash commands:\n{}",
        commands.iter().filter(|c| !c.admins_only).map(line).collect::<Vec<_>>().join("\n")
    );
    if admin {
        let admin_lines: Vec<String> = commands.iter().filter(|c| c.admins_only).map(line).collect();
        if !admin_lines.is_empty() {
            text.push_str(&format!("\nFor admins (you are one):\n{}", admin_lines.join("\n")));
        }
    }
    crate::text::clamp(&text, 2000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(usage: &str, admins_only: bool) -> Listed {
        Listed { usage: usage.into(), description: format!("what {usage} does"), admins_only }
    }

    #[test]
    fn members_see_their_commands_and_admins_see_theirs_too() {
        let commands = [listed("`!llmstats`", false), listed("`!llmtrain`", true)];
        let member = render(&commands, false, "!", "mynah");
        assert!(member.contains("- `!llmstats`: what `!llmstats` does"));
        assert!(!member.contains("llmtrain"));
        let admin = render(&commands, true, "!", "mynah");
        assert!(admin.contains("For admins (you are one):\n- `!llmtrain`"));
        assert!(admin.starts_with("Mention me (@mynah)"));
    }
}
