"""Every hook of `engine`, and the only place hooks are specified.

Dump, as `engine dump -t PID -D DIR` runs it (engine/dump.py):

1. ``engine_dump_tree`` names the tasks to dump (first result wins);
   the core freezes every one of them with the tracer and reads its state.
2. ``engine_dump_task`` runs once per frozen task, parents first; each plugin
   writes that task's images (core-PID, mm-PID + pages, fs-PID, ...).
3. ``engine_dump_fd`` runs for every open fd of every task; the first plugin
   that recognises the fd claims it and describes it for files.img.
4. ``engine_dump_finish`` writes images about the whole tree (pstree, ...);
   the core then writes the images plugins added entries to (files.img),
   and, last of all, inventory.img, which ``engine_dump_inventory`` fills.
   ``engine_dump_written`` then runs, the image set complete.
5. The core kills the tree, or resumes it with ``--leave-running``; on any
   failure it resumes the tree untouched, after ``engine_dump_abort``.

Every hook runs plugin by plugin in hooks.toml order (then the entry points'
plugins): the order of dump claims, of collect, of finish is that file's.

Restore, as `engine restore -D DIR` runs it (engine/restore.py):

1. The core checks inventory.img. ``engine_restore_collect``: every plugin
   reads its images, adds nodes to the restore graph and publishes what it
   provides for the plugins after it (``ctx.provide``); nothing is started
   yet, so any error here is free.
2. The core checks the graph (cycles, resources no enabled plugin provides).
3. ``engine_restore_node`` runs for each node in graph order, in the engine,
   inside the task the node belongs to, or in the tracer, as the node says.
4. ``engine_restore_ready`` runs, every task stopped; the core releases
   every task together.
5. ``engine_restore_finish`` runs once the tree runs; ``engine_restore_abort``
   runs instead when anything failed, after every started task was killed.

Each docstring says when the hook is called, its parameters, and three fixed
fields: ``Runs in``, ``May touch`` and ``Returns`` (tests/test_contract.py
checks they are there).
"""
import pluggy

hookspec = pluggy.HookspecMarker("engine")


# --- registration --------------------------------------------------------

@hookspec(historic=True)
def engine_register_images(registry):
    """Called once when the plugin manager is set up, to declare image kinds.

    :param registry: the ``engine.images.kinds.KindRegistry``; call
        ``registry.register(ImageKind(...))`` for each image kind the plugin
        writes and reads (the engine registers only its own: inventory,
        files, fdinfo). List in the plugin's hooks.toml ``images`` those a
        restore needs it for: a disabled plugin is never imported, and its
        ``images`` are what a restore refuses.

    Runs in: engine
    May touch: only the registry passed in.
    Returns: nothing.
    """


@hookspec(historic=True)
def engine_addoption(parser):
    """Called once while the command line is built, to add plugin options.

    :param parser: an ``argparse`` argument group named after the plugin
        phase; options should be prefixed with the plugin name
        (``--sk-inet-...``) so two plugins never clash.

    Runs in: engine
    May touch: only the parser passed in.
    Returns: nothing.
    """


# --- dump: the tree --------------------------------------------------------

@hookspec(firstresult=True)
def engine_dump_tree(ctx, root_pid):
    """Called first in a dump, before anything is frozen, to list the tasks.

    :param ctx: the ``engine.dump.DumpContext``.
    :param root_pid: the pid given with ``-t``.

    Runs in: engine
    May touch: /proc of the target tree (read only); ``ctx.stash``.
    Returns: the list of process ids to dump, parents before children.
        Stops at first non-None result.
    """


@hookspec
def engine_dump_task(ctx, task):
    """Called once per frozen task, parents first, to write its images.

    :param ctx: the ``engine.dump.DumpContext``.
    :param task: the ``engine.dump.DumpTask``: ``pid``, the frozen
        ``tracee`` and ``state`` (``engine.tracer.model.TaskState``).

    Runs in: engine (the tracer holds the task stopped)
    May touch: the task through ``task.tracee`` (reads; remote syscalls that
        leave no trace), ``ctx.images`` (its own image kinds), ``ctx.stash``.
    Returns: nothing.
    """


# --- dump: claiming ----------------------------------------------------------

@hookspec(firstresult=True)
def engine_dump_fd(ctx, task, fd, link, stat):
    """Called for every open fd of a frozen task, to claim and describe it.

    :param ctx: the ``engine.dump.DumpContext``.
    :param task: the ``engine.dump.DumpTask`` holding the fd.
    :param fd: the fd number in the task.
    :param link: ``readlink(/proc/PID/fd/FD)``, e.g. ``/etc/hosts`` or
        ``socket:[1234]``.
    :param stat: ``os.stat`` of ``/proc/PID/fd/FD`` (follows the fd).

    Runs in: engine
    May touch: /proc of the task, the fd through pidfd_getfd, ``ctx.stash``,
        files.img (``engine.images.entries.add_file``) for files the entry
        it returns names (a FIFO's path).
    Returns: an ``engine.dump.FdClaim`` (file id and type) for an fd the
        plugin owns, None for one it does not. Stops at first non-None result.
    """


@hookspec
def engine_dump_finish(ctx):
    """Called once after every task was dumped, before the tree is let go.

    :param ctx: the ``engine.dump.DumpContext``.

    Runs in: engine (the tree is still frozen)
    May touch: ``ctx.images`` (tree-wide image kinds), ``ctx.stash``.
    Returns: nothing.
    """


@hookspec
def engine_dump_inventory(ctx, inventory):
    """Called once, after every ``engine_dump_finish``, to fill the
    completion marker the engine then writes last.

    :param ctx: the ``engine.dump.DumpContext``.
    :param inventory: the ``inventory_entry`` to write; the engine set the
        format's fields (img_version, fdinfo_per_id, ns_per_id).

    Runs in: engine (the tree is still frozen)
    May touch: the fields of ``inventory`` the plugin owns (core: root_ids).
    Returns: nothing.
    """


@hookspec
def engine_dump_written(ctx):
    """Called once the image set is complete (inventory.img written), before
    the tree is killed or resumed: CRIU's post-dump point.

    :param ctx: the ``engine.dump.DumpContext``.

    Runs in: engine (the tree is still frozen)
    May touch: nothing of the images; it may tell someone they are there
        (the RPC service's post-dump notify). Raising fails the dump: the
        tree is resumed untouched, as CRIU does when post-dump fails.
    Returns: nothing.
    """


@hookspec
def engine_dump_abort(ctx, error):
    """Called once when a dump failed, before the frozen tree is let go.

    :param ctx: the ``engine.dump.DumpContext``.
    :param error: the exception that stopped the dump.

    Runs in: engine (the tree is still frozen)
    May touch: what the plugin changed outside the images during this dump
        (e.g. a network lock, TCP repair mode), to put it back; must not raise.
    Returns: nothing.
    """


# --- restore: collect -------------------------------------------------------

@hookspec
def engine_restore_collect(ctx, graph):
    """Called once per restore, before any task exists, to build the graph.

    Every check of the images belongs here: an error raised now starts
    nothing, so nothing has to be undone.

    :param ctx: the ``engine.context.RestoreContext``: ``images``, ``stash``,
        ``options``; ``ctx.provided(RESOURCE)`` gives what the plugins
        above this one in hooks.toml published (``tasks``: pstree's tree).
    :param graph: the ``engine.graph.Graph``; call ``graph.add(Node(...))``.
        A node names what it comes after as (resource, id) pairs other
        nodes provide (``Node.after``, ``Node.provides``), or as keys of
        its own plugin's nodes; it never reads or edits another plugin's.

    Runs in: engine
    May touch: ``ctx.images`` (read only), ``ctx.stash``, the graph, and
        ``ctx.provide`` for the resources hooks.toml says it provides.
    Returns: nothing.
    """


# --- restore: run ------------------------------------------------------------

@hookspec(firstresult=True)
def engine_restore_node(ctx, node):
    """Called for each graph node, in graph order, to restore it: on the
    hookimpls of the plugin that owns it (``node.plugin``) and on every
    wrapper (``wrapper=True``) of any plugin, not on the other plugins'
    hookimpls (Registry.restore_node).

    Where it runs depends on the node: ``node.where == "engine"`` runs in the
    engine, ``"task"`` runs in the forked task ``node.pid`` (its executor
    loop), ``"tracer"`` runs in the engine, or in the second tracer (a fork of
    the engine that restores half of the tasks, engine/tracers.py), with the
    task stopped under ptrace after every task-side node of it is done, and
    after every node of another task that comes after one of its nodes
    (Node.after: it may take a file from the task, which closes the fds it
    does not keep when it stops).
    A hooks.toml ``after`` orders a node after every node of the providers;
    ``after_in_task`` only after those in its own task.

    :param ctx: the ``engine.context.RestoreContext``.
    :param node: the ``engine.graph.Node`` to restore.

    Runs in: engine | task | tracer (as ``node.where`` says)
    May touch: in a task: the task's own fds, cwd, credentials and
        namespaces; in the tracer: the stopped task through ``ctx.tracees``;
        always ``ctx.stash`` (the copy of the process the node runs in: tracer
        nodes of tasks that share stash state name it in
        ``Node.tracer_shares``, so one tracer runs them all).
    Returns: True for a node the plugin restored, None for a node it does
        not own. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def engine_restore_file(ctx, entry):
    """Called inside a task to open one file object from files.img.

    :param ctx: the ``engine.context.RestoreContext``.
    :param entry: the ``file_entry`` message (its ``type`` says which kind).

    Runs in: task
    May touch: the task's own fd table (it may open temporaries, but must
        close them).
    Returns: a new fd (int) the caller installs at the dumped number, or
        None for a file type the plugin does not own.
        Stops at first non-None result.
    """


@hookspec
def engine_restore_ready(ctx):
    """Called once every node ran, every task stopped with its memory and
    registers in place, just before they are all released: CRIU's
    post-restore and pre-resume point.

    :param ctx: the ``engine.context.RestoreContext``; ``ctx.started[0]``
        is the root task's pid.

    Runs in: engine
    May touch: nothing of the tasks; it may tell someone the tree is there
        (the RPC service's notifies). Raising fails the restore: every task
        is killed, as before any release.
    Returns: nothing.
    """


@hookspec
def engine_restore_finish(ctx):
    """Called once after every task was released and runs.

    :param ctx: the ``engine.context.RestoreContext``.

    Runs in: engine
    May touch: engine-side resources the plugin set up (e.g. a network lock).
    Returns: nothing.
    """


@hookspec
def engine_restore_abort(ctx, error):
    """Called once when a restore failed, after every started task was killed.

    :param ctx: the ``engine.context.RestoreContext``.
    :param error: the exception that stopped the restore.

    Runs in: engine
    May touch: engine-side resources the plugin set up; must not raise.
    Returns: nothing.
    """
